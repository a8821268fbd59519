// The names people and peers give things (hosts, sites, tasks, volumes, checkpoints): one pattern,
// checked wherever a name comes in (the API, the links, the requests between sites, the flags).
// Files and directories are named after them, so "." and ".." are not names; nor is "__proto__",
// which JavaScript objects keyed by names (an answer's agents, a report's volumes) would drop.
const NAME = (max: number) => `(?!(?:\\.\\.?|__proto__)(?:$|/))[A-Za-z0-9._-]{1,${max}}`;

/** A host's, site's, task's, volume's or checkpoint's name, unanchored (to build other patterns with). */
export const NAME_PATTERN = NAME(64);
/** A host's, site's, task's, volume's or checkpoint's name. */
export const NAME_RE = new RegExp(`^${NAME_PATTERN}$`);
/** An agent's name as the links carry it (a host name may be longer). */
export const AGENT_NAME_RE = new RegExp(`^${NAME(128)}$`);
/** A volume as the sites name it: AGENT/NAME. */
export const VOLUME_KEY_RE = new RegExp(`^${NAME(128)}/${NAME(64)}$`);

export const NAME_HINT =
  "must be 1 to 64 characters: letters, digits, '.', '_' or '-' (not '.', '..' or '__proto__')";
export const AGENT_NAME_HINT =
  "must be 1 to 128 characters: letters, digits, '.', '_' or '-' (not '.', '..' or '__proto__')";
