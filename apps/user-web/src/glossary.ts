/**
 * The page's vocabulary: one short definition per word (the tooltip) and a longer one (the
 * glossary section at the bottom of the page). Every place that uses one of these words links to
 * its entry through `term()` or an `<a data-term="...">` in index.html, so the words mean the
 * same thing wherever they appear.
 */

export type Term =
  | 'round'
  | 'turn'
  | 'update'
  | 'edge'
  | 'cloud'
  | 'adapter'
  | 'activations'
  | 'split'
  | 'engine'
  | 'token';

interface Entry {
  word: string;
  /** one line: the tooltip */
  short: string;
  /** the glossary's text */
  long: string;
}

export const GLOSSARY: Record<Term, Entry> = {
  round: {
    word: 'Round',
    short: 'One cycle of training: each edge server trains its people in turn, then the cloud averages the results.',
    long:
      'One cycle of training. In each round every edge server trains the people connected to it, one after ' +
      'another, and the cloud then averages what they learned into the next shared model update. ' +
      'Round N makes shared model update N.',
  },
  turn: {
    word: 'Turn',
    short: 'Your part of a round: a few training steps on your text, done in this tab.',
    long:
      'Your part of a round: this tab trains for a few steps on windows of your text, starting from the ' +
      'latest shared model update. You wait in line for it; at most one turn per round is yours.',
  },
  update: {
    word: 'Shared model update',
    short: 'The shared adapter after a round: everyone\u2019s training averaged. Round N makes update N.',
    long:
      'The shared (global) adapter everyone starts from, as of the last completed round. Round N makes ' +
      'update N; update 0 is the starting point before any round.',
  },
  edge: {
    word: 'Edge server',
    short: 'The server near you that runs the middle of the model and talks to this tab.',
    long:
      'A server, run by an operator near you, that computes the middle layers of the model and passes ' +
      'numbers between this tab and the cloud. It keeps the line of people waiting for their turn.',
  },
  cloud: {
    word: 'Cloud',
    short: 'The central server: it runs the last layers and combines everyone\u2019s training.',
    long:
      'The central server of the run: it computes the model\u2019s last layers, hands out join links, and ' +
      'averages every round\u2019s adapters into the next shared model update.',
  },
  adapter: {
    word: 'Adapter (LoRA)',
    short: 'The small set of extra weights that fine-tuning changes; the model itself stays as it is.',
    long:
      'Fine-tuning does not change the model\u2019s own weights: it trains a small set of extra weights ' +
      '(low-rank adaptation, LoRA) added to some layers. Your download holds the part for the layers this ' +
      'tab runs, in the format the PEFT library reads.',
  },
  activations: {
    word: 'Activations',
    short: 'The numbers the model\u2019s first layers compute from your text; they are sent, not the text.',
    long:
      'The numbers the model\u2019s first layers compute from your text in this tab. They, not your text, go to ' +
      'the edge server; section 2 says how much of your text could be read back from them.',
  },
  split: {
    word: 'Split point',
    short: 'Where the model is cut: the layers before it run in this tab, the rest on the servers.',
    long:
      'Where the model is cut between this tab and the servers: the first layers run here, the middle on ' +
      'the edge server, the last in the cloud.',
  },
  engine: {
    word: 'Engine (WebGPU / WebAssembly)',
    short: 'How this tab computes: WebGPU uses the graphics chip, WebAssembly the processor.',
    long:
      'How this tab does its computing. WebGPU runs it on the graphics chip, usually the fastest; ' +
      'WebAssembly runs it on the processor and works everywhere. "Automatic" picks one, and when the ' +
      'browser\u2019s WebGPU runs in software it times one training step of each and keeps the faster.',
  },
  token: {
    word: 'Token',
    short: 'A piece of text the model reads: a word or part of a word.',
    long:
      'The model reads text as tokens: common words are one token, rare words several. Amounts of text and ' +
      'of training are counted in tokens.',
  },
};

/** A link to `t`'s glossary entry with its tooltip, reading `text`. */
export function term(t: Term, text: string): HTMLAnchorElement {
  const a = document.createElement('a');
  a.textContent = text;
  a.dataset.term = t;
  decorate(a);
  return a;
}

function decorate(a: HTMLAnchorElement): void {
  const e = GLOSSARY[a.dataset.term as Term];
  if (!e) throw new Error(`no glossary entry "${a.dataset.term}"`);
  a.href = `#g-${a.dataset.term}`;
  a.title = e.short;
  a.classList.add('term');
}

/** Fills the glossary list and gives every `a[data-term]` under `root` its link and tooltip. */
export function renderGlossary(list: HTMLElement, root: ParentNode = document): void {
  list.replaceChildren(
    ...Object.entries(GLOSSARY).flatMap(([key, e]) => {
      const dt = document.createElement('dt');
      dt.id = `g-${key}`;
      dt.textContent = e.word;
      const dd = document.createElement('dd');
      dd.textContent = e.long;
      return [dt, dd];
    }),
  );
  for (const a of root.querySelectorAll<HTMLAnchorElement>('a[data-term]')) decorate(a);
}
