/**
 * The WebGPU device in Node (Dawn through the `webgpu` package, software Vulkan where there is
 * no GPU): what createUserTrainer's getGpu wants outside a browser. Node only.
 */
import type { GpuContext } from '@splitllm/lora-kernels';
import { nodeKernelDevice } from '@splitllm/lora-kernels/node';

export { chooseVulkanIcd, nodeKernelDevice } from '@splitllm/lora-kernels/node';

/** A kernel device; throws GpuError('NO_ADAPTER' | 'NO_WEBGPU') saying why when there is none. */
export function nodeGpu(): Promise<GpuContext> {
  return nodeKernelDevice();
}
