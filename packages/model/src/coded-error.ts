/**
 * The one base of the project's errors: every error that crosses a module boundary carries a
 * machine-readable `code` from a closed union its module declares, and a sentence for people.
 * Servers answer with the code (an error frame, a JSON body); clients show the sentence.
 */
export class CodedError<C extends string = string> extends Error {
  readonly code: C;
  constructor(code: C, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** The code of one of our errors; `fallback` for anything else (a bug, a library's error). */
export function codeOf(err: unknown, fallback: string): string {
  return err instanceof CodedError ? err.code : fallback;
}
