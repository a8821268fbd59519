ALTER TABLE `hosts` ADD `discovered` integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE `hosts` ADD `last_seen` integer;--> statement-breakpoint
ALTER TABLE `partitions` ADD `discovered` integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE `partitions` ADD `last_seen` integer;--> statement-breakpoint
ALTER TABLE `sites` ADD `discovered` integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE `sites` ADD `last_seen` integer;--> statement-breakpoint
ALTER TABLE `tasks` ADD `failure_json` text;