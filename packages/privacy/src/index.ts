/**
 * @splitllm/privacy: what an honest-but-curious edge or cloud can recover from what a tab
 * sends (activations h1/h2, and dL/dhL with labels on the device), measured with the attacks
 * of this package. See docs/privacy.md for the threat model and the figures.
 */
export * from './recovery';
export * from './noise';
export * from './forward';
export * from './decoder';
export * from './search';
export * from './gradient-labels';
export * from './measure';
