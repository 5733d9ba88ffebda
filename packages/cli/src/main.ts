#!/usr/bin/env node
/**
 * The `splitllm` command (`pnpm splitllm <command>` from the repository root).
 * Errors are one line on stderr and a non-zero exit: 2 for bad usage, 1 for anything else.
 * SPLITLLM_DEBUG=1 prints the stack as well.
 */
import { UsageError } from './args';
import { attackCommand, attackHelp } from './commands/attack';
import { benchCommand, benchHelp } from './commands/bench';
import { evalCommand, evalHelp } from './commands/eval';
import { inviteCommand, inviteHelp } from './commands/invite';
import { pretrainCommand, pretrainHelp } from './commands/pretrain';
import { trainCentralCommand, trainCentralHelp } from './commands/train-central';
import { cloudCommand, cloudHelp, edgeCommand, edgeHelp, userCommand, userHelp } from './commands/parts';
import { serveCommand, serveHelp } from './commands/serve';
import { simulateCommand, simulateHelp } from './commands/simulate';

const commands: Record<string, { run: (argv: string[]) => Promise<void>; help: string }> = {
  eval: { run: evalCommand, help: evalHelp },
  'train-central': { run: trainCentralCommand, help: trainCentralHelp },
  simulate: { run: simulateCommand, help: simulateHelp },
  bench: { run: benchCommand, help: benchHelp },
  serve: { run: serveCommand, help: serveHelp },
  invite: { run: inviteCommand, help: inviteHelp },
  cloud: { run: cloudCommand, help: cloudHelp },
  edge: { run: edgeCommand, help: edgeHelp },
  user: { run: userCommand, help: userHelp },
  pretrain: { run: pretrainCommand, help: pretrainHelp },
  attack: { run: attackCommand, help: attackHelp },
};

function usage(): string {
  return ['usage: splitllm <command> [options]', '', ...Object.values(commands).map((c) => `${c.help}\n`)].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    console.log(usage());
    return name === undefined ? 2 : 0;
  }
  const command = commands[name];
  if (!command) throw new UsageError(`unknown command "${name}" (commands: ${Object.keys(commands).join(', ')})`);
  if (rest.includes('--help') || rest.includes('-h')) {
    console.log(command.help);
    return 0;
  }
  await command.run(rest);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    const err = e instanceof Error ? e : new Error(String(e));
    process.stderr.write(`splitllm: ${err.message.split('\n')[0]}\n`);
    if (process.env.SPLITLLM_DEBUG === '1' && err.stack) process.stderr.write(`${err.stack}\n`);
    process.exitCode = e instanceof UsageError ? e.exitCode : 1;
  },
);
