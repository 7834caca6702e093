"""Writing evaluator outputs: atomically, after the summary line is printed.

Every evaluator prints its one-line summary first and then writes its files with `write_atomic`,
so a full or read-only disk can lose no score (it is on the console) and leaves no half-written
or 0-byte file (a reader sees the old file or the new one, never a part).
"""
import os
from pathlib import Path


def write_atomic(path, text: str) -> Path:
    """Write `text` to `path` via a temp file in the same folder and a rename.

    On failure the temp file is removed and OSError names `path` and the reason.
    """
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise OSError(err.errno, f'{path}: cannot write ({err.strerror or err}); the summary '
                                 f'printed above is the result, nothing partial was left') from None
    return path
