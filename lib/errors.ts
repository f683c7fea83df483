import { constants } from 'node:os';

const errnoNames = new Map<number, string>(
  Object.entries(constants.errno).map(([name, value]) => [value, name]),
);

/**
 * Every error fusekit raises: `code` is the errno name (ENOENT, EBUSY, EINVAL, ...), so callers can
 * branch on it the way they do on Node's own fs errors.
 */
export class FusekitError extends Error {
  readonly code: string;
  readonly errno: number;
  readonly path?: string;

  constructor(code: string, message: string, options: { path?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'FusekitError';
    this.code = code;
    this.errno = (constants.errno as Record<string, number>)[code] ?? 0;
    if (options.path !== undefined) this.path = options.path;
  }

  /** Wraps an error from Node's fs or from the native core. */
  static from(err: unknown, fallbackMessage?: string, path?: string): FusekitError {
    if (err instanceof FusekitError) return err;
    const e = err as NodeJS.ErrnoException & { errno?: number };
    let code = typeof e?.code === 'string' ? e.code : undefined;
    if (!code && typeof e?.errno === 'number') code = errnoNames.get(Math.abs(e.errno));
    const message = fallbackMessage ?? (e instanceof Error ? e.message : String(err));
    return new FusekitError(code ?? 'EIO', message, { path, cause: err });
  }
}

export function invalid(message: string): FusekitError {
  return new FusekitError('EINVAL', message);
}
