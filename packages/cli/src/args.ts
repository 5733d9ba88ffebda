/**
 * Argument parsing shared by the commands: node:util parseArgs in strict mode, plus typed
 * accessors that turn a missing or malformed value into a UsageError (one line, exit 2).
 */
import { parseArgs } from 'node:util';
import { CodedError } from '@splitllm/model';

/** Bad arguments: exit code 2, as usage errors conventionally have. */
export class UsageError extends CodedError<'USAGE'> {
  readonly exitCode = 2;
  constructor(message: string) {
    super('USAGE', message);
  }
}

export type OptionSpec = Record<string, { type: 'string' | 'boolean'; short?: string }>;

export class Args {
  constructor(
    private readonly command: string,
    private readonly values: Record<string, string | boolean | undefined>,
  ) {}

  static parse(command: string, argv: string[], spec: OptionSpec): Args {
    try {
      const { values, positionals } = parseArgs({ args: argv, options: spec, strict: true, allowPositionals: true });
      if (positionals.length > 0) throw new UsageError(`${command}: unexpected argument "${positionals[0]}"`);
      return new Args(command, values as Record<string, string | boolean | undefined>);
    } catch (e) {
      if (e instanceof UsageError) throw e;
      // parseArgs messages are already one readable line ("Unknown option '--x'")
      throw new UsageError(`${command}: ${(e as Error).message}`);
    }
  }

  flag(name: string): boolean {
    return this.values[name] === true;
  }

  optionalString(name: string): string | undefined {
    const v = this.values[name];
    return typeof v === 'string' ? v : undefined;
  }

  string(name: string): string {
    const v = this.optionalString(name);
    if (v === undefined || v === '') throw new UsageError(`${this.command}: --${name} is required`);
    return v;
  }

  private number(name: string, fallback: number | undefined, integer: boolean, min: number): number {
    const raw = this.optionalString(name);
    if (raw === undefined) {
      if (fallback === undefined) throw new UsageError(`${this.command}: --${name} is required`);
      return fallback;
    }
    const v = Number(raw);
    if (!Number.isFinite(v) || (integer && !Number.isInteger(v)) || v < min) {
      throw new UsageError(
        `${this.command}: --${name} must be ${integer ? 'an integer' : 'a number'} >= ${min}, got "${raw}"`,
      );
    }
    return v;
  }

  int(name: string, fallback?: number, min = 0): number {
    return this.number(name, fallback, true, min);
  }

  float(name: string, fallback?: number, min = 0): number {
    return this.number(name, fallback, false, min);
  }
}
