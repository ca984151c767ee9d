import koffi from 'koffi';
import { loadLibrary } from '../libs.js';
import type { Out } from './driver.js';

/**
 * NCCL declarations (libnccl.so.2), nothing else. Functions return an ncclResult_t (0 =
 * success). Device buffers are CUdeviceptr numbers, streams are driver CUstream handles (the
 * same object as a cudaStream_t). RINGATTN_LIBNCCL overrides the library path.
 */

export const NCCL_UNIQUE_ID_BYTES = 128;

/** ncclDataType_t */
export const NCCL_DTYPE = { int8: 0, uint8: 1, int32: 2, uint32: 3, int64: 4, uint64: 5, float16: 6, float32: 7, float64: 8, bfloat16: 9 } as const;
/** ncclRedOp_t */
export const NCCL_OP = { sum: 0, prod: 1, max: 2, min: 3, avg: 4 } as const;

export interface NcclApi {
  readonly path: string;
  ncclGetVersion(out: Out<number>): number;
  /** `id`: a 128-byte buffer that receives the ncclUniqueId. */
  ncclGetUniqueId(id: Buffer): number;
  /** `id`: the 128 bytes of the ncclUniqueId (passed by value). */
  ncclCommInitRank(out: Out<unknown>, nranks: number, id: { internal: Uint8Array }, rank: number): number;
  ncclSend(buf: number, count: number, dtype: number, peer: number, comm: unknown, stream: unknown): number;
  ncclRecv(buf: number, count: number, dtype: number, peer: number, comm: unknown, stream: unknown): number;
  ncclAllReduce(send: number, recv: number, count: number, dtype: number, op: number, comm: unknown, stream: unknown): number;
  ncclAllGather(send: number, recv: number, count: number, dtype: number, comm: unknown, stream: unknown): number;
  ncclBroadcast(send: number, recv: number, count: number, dtype: number, root: number, comm: unknown, stream: unknown): number;
  /** The communicator's asynchronous error (0 = none, 7 = ncclInProgress). */
  ncclCommGetAsyncError(comm: unknown, out: Out<number>): number;
  ncclGroupStart(): number;
  ncclGroupEnd(): number;
  ncclCommAbort(comm: unknown): number;
  ncclCommDestroy(comm: unknown): number;
  ncclGetErrorString(code: number): string;
}

let uniqueIdType: koffi.IKoffiCType | undefined;

function declarations(): Record<keyof Omit<NcclApi, 'path'>, string> {
  uniqueIdType ??= koffi.struct('ncclUniqueId', { internal: koffi.array('uint8_t', NCCL_UNIQUE_ID_BYTES, 'Typed') });
  return {
    ncclGetVersion: 'int ncclGetVersion(_Out_ int *v)',
    ncclGetUniqueId: 'int ncclGetUniqueId(void *id)',
    ncclCommInitRank: 'int ncclCommInitRank(_Out_ void **comm, int nranks, ncclUniqueId id, int rank)',
    ncclSend: 'int ncclSend(uint64_t buf, size_t count, int dtype, int peer, void *comm, void *stream)',
    ncclRecv: 'int ncclRecv(uint64_t buf, size_t count, int dtype, int peer, void *comm, void *stream)',
    ncclAllReduce: 'int ncclAllReduce(uint64_t send, uint64_t recv, size_t count, int dtype, int op, void *comm, void *stream)',
    ncclAllGather: 'int ncclAllGather(uint64_t send, uint64_t recv, size_t count, int dtype, void *comm, void *stream)',
    ncclBroadcast: 'int ncclBroadcast(uint64_t send, uint64_t recv, size_t count, int dtype, int root, void *comm, void *stream)',
    ncclCommGetAsyncError: 'int ncclCommGetAsyncError(void *comm, _Out_ int *err)',
    ncclGroupStart: 'int ncclGroupStart()',
    ncclGroupEnd: 'int ncclGroupEnd()',
    ncclCommAbort: 'int ncclCommAbort(void *comm)',
    ncclCommDestroy: 'int ncclCommDestroy(void *comm)',
    ncclGetErrorString: 'const char *ncclGetErrorString(int code)',
  };
}

export function loadNccl(): NcclApi | { error: string } {
  const l = loadLibrary(['libnccl.so.2', 'libnccl.so'], 'RINGATTN_LIBNCCL');
  if ('error' in l) return { error: `NCCL library not found: ${l.error}` };
  const api: Record<string, unknown> = { path: l.path };
  try {
    for (const [name, decl] of Object.entries(declarations())) api[name] = l.lib.func(decl);
  } catch (e) {
    return { error: `${l.path} lacks an NCCL function: ${(e as Error).message}` };
  }
  return api as unknown as NcclApi;
}
