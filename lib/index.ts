export { FusekitError } from './errors';
export {
  type IdMapOptions,
  type IdRange,
  checkRanges,
  parseColonIdMap,
  parseProcIdMap,
  parseSubid,
  readSubid,
} from './idmap';
export {
  Mount,
  type MountStats,
  type TraceOptions,
  type UnmountOptions,
  liveMounts,
  mount,
  unmountPath,
} from './mount';
export type { FsEvent } from './native';
export {
  type AccessRule,
  type CacheOptions,
  type MountOptions,
  type OverlayLayers,
  OPTION_SPECS,
} from './options';
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
export { controlRequest, controlSocketPath, controlTrace } from './control';
export { metricsContentType, renderMetrics } from './metrics';
export { type PluginHandle, type PluginOptions, startPlugin } from './docker-plugin';
