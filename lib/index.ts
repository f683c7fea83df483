export { FusekitError } from './errors';
export { Mount, type MountStats, type UnmountOptions, liveMounts, mount, unmountPath } from './mount';
export { type MountOptions, type OverlayLayers, OPTION_SPECS } from './options';
export {
  type ChangeKind,
  type EntryType,
  type LayerChange,
  type SandboxLayer,
  type SandboxOptions,
  diff,
  exportLayer,
  reset,
  sandbox,
} from './layers';
