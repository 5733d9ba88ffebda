/**
 * WebGPU in Node through the `webgpu` package (Dawn). On machines without a GPU it needs a
 * software Vulkan driver: Chromium's SwiftShader (Debian `chromium` ships it) or a lavapipe
 * from mesa >= 25 (Dawn rejects mesa 22's). `VK_ICD_FILENAMES` picks one; it must be set before
 * the first adapter request, so this module sets it on first use when the caller has not.
 */
import fs from 'node:fs';
import { requestKernelDevice, GpuError, type GpuContext } from './gpu';

/** Software Vulkan drivers tried in order when VK_ICD_FILENAMES is unset and no GPU driver is present. */
export const SOFTWARE_VULKAN_ICDS = ['/usr/lib/chromium/vk_swiftshader_icd.json'];

const HARDWARE_ICD_DIRS = ['/usr/share/vulkan/icd.d', '/etc/vulkan/icd.d'];

/**
 * A real GPU driver is there when NVIDIA's ICD is installed, or when a render node exists
 * (mesa's Intel/AMD drivers are installed with lavapipe on machines that have no GPU at all).
 */
function hasHardwareIcd(): boolean {
  const icds = HARDWARE_ICD_DIRS.flatMap((dir) => {
    try {
      return fs.readdirSync(dir);
    } catch {
      return [];
    }
  });
  if (icds.some((n) => n.startsWith('nvidia'))) return true;
  let renderNodes: string[] = [];
  try {
    renderNodes = fs.readdirSync('/dev/dri').filter((n) => n.startsWith('renderD'));
  } catch {
    return false;
  }
  return renderNodes.length > 0 && icds.some((n) => n.endsWith('.json') && !n.startsWith('lvp_'));
}

/** Which Vulkan driver a Node process would use, and why. */
export function chooseVulkanIcd(env: NodeJS.ProcessEnv = process.env): { icd?: string; reason: string } {
  if (env.VK_ICD_FILENAMES) return { icd: env.VK_ICD_FILENAMES, reason: 'VK_ICD_FILENAMES is set' };
  if (hasHardwareIcd()) return { reason: 'a Vulkan GPU driver is installed' };
  const sw = SOFTWARE_VULKAN_ICDS.find((f) => fs.existsSync(f));
  if (sw) return { icd: sw, reason: 'no GPU driver: software Vulkan' };
  return { reason: 'no Vulkan driver found (apt install chromium libvulkan1 gives SwiftShader)' };
}

// Dawn ties the device's lifetime to the object create() returns: keep every one referenced.
const keepAlive: unknown[] = [];

/** A kernel device in Node; throws GpuError('NO_ADAPTER') with the reason when none exists. */
export async function nodeKernelDevice(): Promise<GpuContext> {
  const choice = chooseVulkanIcd();
  if (choice.icd && !process.env.VK_ICD_FILENAMES) process.env.VK_ICD_FILENAMES = choice.icd;
  process.env.XDG_RUNTIME_DIR ||= '/tmp';
  let mod: typeof import('webgpu');
  try {
    mod = await import('webgpu');
  } catch (e) {
    throw new GpuError(
      'NO_WEBGPU',
      `the webgpu package failed to load (${(e as Error).message}); is libvulkan1 installed?`,
    );
  }
  Object.assign(globalThis, mod.globals);
  const gpu = mod.create([]);
  keepAlive.push(gpu);
  try {
    return await requestKernelDevice(gpu);
  } catch (e) {
    if (e instanceof GpuError) throw new GpuError(e.code, `${e.message}; ${choice.reason}`);
    throw e;
  }
}
