/** The error every adapter check throws, with its codes (adapter-ops.ts, lora.ts, llama-lora.ts). */
import { CodedError } from './coded-error';

export type AdapterCheckCode =
  | 'ADAPTER_CONFIG'
  | 'ADAPTER_SHAPE'
  | 'ADAPTER_NOT_FINITE'
  | 'ADAPTER_NORM'
  | 'ADAPTER_MODULE';

export class AdapterCheckError extends CodedError<AdapterCheckCode> {}
