// A site's Receiver over a journal the test fakes: the acknowledgements it sends are collected
// (each the count of records acknowledged so far).
import { Receiver, type ReceiverOptions } from "../../src/replication/receiver.ts";
import type { Journal, VolumeInfo } from "../../src/journal/journal.ts";
import { decodeSeqFrame, FRAME_HEADER, FrameType } from "../../src/wire/frames.ts";

export function testReceiver(
  vol: VolumeInfo,
  journal: unknown,
  o: Pick<ReceiverOptions, "replicaPos" | "standbyPos"> & Partial<ReceiverOptions>,
): { receiver: Receiver; acked: number[] } {
  const acked: number[] = [];
  const receiver = new Receiver({
    journal: journal as Journal,
    register: () => Promise.resolve(vol),
    copyState: () => "consistent",
    setState: () => {},
    promoted: () => false,
    send: (f) => {
      if (f[4] === FrameType.Accepted) acked.push(decodeSeqFrame(f.subarray(FRAME_HEADER)).seq);
    },
    ...o,
  });
  return { receiver, acked };
}
