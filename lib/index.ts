export { FusekitError } from './errors';
export { Mount, type MountStats, type UnmountOptions, liveMounts, mount, unmountPath } from './mount';
export { type MountOptions, type OverlayLayers, OPTION_SPECS } from './options';
