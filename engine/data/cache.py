"""The data cache: each image decoded once per data set, not once per job, then memory-mapped by training.

An entry is one file's decoded HR image (uint8, as image_files decodes it; none for a file it cannot decode)
or that image's LR reference at one scale (float32, as crops.training_pair makes it), in array_file.py's
layout, under FOLDER/hr/ and FOLDER/lr/. An entry's name is a digest of what makes it: for an HR entry, the
file's path within the set's folder (the deepest holding all its files; where the set is mounted does not
count), size and modification time and the decode rule (the decoder's source, Pillow's version and its
decompression-bomb limit); for an LR entry, its HR entry's name, the scale and the resize rule (the resize's
source and numpy's version). So a changed or added file, a new scale or a changed rule makes new entries for
what it changed and leaves the rest alone (a file added above every other one of the set moves its folder
up, and the set is made again); entries of files that changed are never read again (deleting the
folder reclaims their space).

Missing entries are made in parallel over the cores, each written aside and renamed into place: a build killed
part way leaves whole entries (kept) and temporary files (removed by the next build). An entry that is not
whole is made again, said in one line. A file that cannot be read now (gone, refused, an I/O error) gets no
entry: it is skipped for this job and tried again by the next. Training reads crops straight from the
mappings: its resident memory is what the crops touch, whatever the set's size, and the ranks and loader
workers of a node, and the jobs that follow, share the pages through the page cache.
"""

import contextlib
import errno
import hashlib
import inspect
import multiprocessing
import os
import socket
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import PIL
import PIL.Image

from engine.data import array_file, crops, image_files, imresize
from engine.data.tensors import cropped_to
from engine.errors import UserError


def rule(*parts):
    """A digest of the code (by its source) and the library versions that make an entry."""
    text = "\0".join(part if isinstance(part, str) else inspect.getsource(part) for part in parts)
    return digest(text)


def digest(*parts):
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:32]


DECODE_RULE = rule(image_files.decode, image_files.to_rgb8, PIL.__version__, str(PIL.Image.MAX_IMAGE_PIXELS))
RESIZE_RULE = rule(crops.training_pair, imresize, np.__version__)


def default_folder():
    """Under the user's cache directory (XDG_CACHE_HOME, or ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "irnscope" / "data"


class Unwritable(Exception):
    """The cache folder cannot take the entries a build makes: read-only, full, over a quota."""


class Unreadable(Unwritable):
    """An entry the cache holds cannot be read (refused: another user's cache; an I/O error) or mapped (the
    process's limit on mappings). Not damage, so not made again; caught where Unwritable is: the job decodes
    into memory."""


def nothing_shown(total):
    """The default progress: a context giving a callback, called once per image made."""
    return contextlib.nullcontext(lambda: None)


class Cache:
    """The entries in `folder`. `images` and `training` are image_files.read_folder's readers: they make
    what is missing, then map every image (and its LR reference at `scale`). `log` takes the build's line
    and the notice of damaged entries; `progress(total)` gives a context whose callback counts images made."""

    def __init__(self, folder, scale, log=print, progress=nothing_shown):
        self.folder, self.scale, self.log, self.progress = Path(folder), scale, log, progress

    def images(self, paths, min_size=1):
        """The images of `paths` as an ImageSet of read-only mappings."""
        return self.read(paths, min_size, references=False)[0]

    def training(self, paths, min_size=1):
        """The images of `paths`, cropped to multiples of the scale, with their LR references, mapped."""
        found, lrs = self.read(paths, min_size, references=True)
        hrs = [cropped_to(img, self.scale) for img in found.images]
        return crops.TrainingSet(found.names, hrs, lrs, found.skipped, found.converted)

    def read(self, paths, min_size, references):
        """(ImageSet, the LR references of its images, or [] without `references`)."""
        root = set_folder(paths)
        keys = [hr_key(path, root) for path in paths]
        opened, damaged = self.open(keys, min_size, references)
        if damaged:
            more = ", ..." if len(damaged) > 1 else ""
            self.log(f"data cache: made again, {len(damaged)} damaged: {damaged[0]}{more}")
        missing = [(path, key) for path, key, entries in zip(paths, keys, opened, strict=True) if entries is None]
        not_read = {}
        if missing:
            # Dropped before the build forks and the entries are mapped again: a mapping held twice would
            # halve the set that fits in the process's limit on mappings (vm.max_map_count).
            opened = None
            not_read = self.build(missing, min_size, references)
            opened, damaged = self.open(keys, min_size, references)
            if damaged or any(e is None and p not in not_read for p, e in zip(paths, opened, strict=True)):
                raise Unwritable(f"entries of the data cache in {self.folder} went missing as they were written")
        found, lrs = image_files.ImageSet([], [], {}), []
        for path, entries in zip(paths, opened, strict=True):
            if entries is None:  # not read this time, so not cached: the next job tries it again
                found.add(Path(path).name, None, not_read[path], min_size)
                continue
            fields, image, lr = entries
            if found.add(Path(path).name, image, fields["mode"], min_size) and references:
                lrs.append(lr)
        return found, lrs

    def open(self, keys, min_size, references):
        """([(HR entry's fields, its image, its LR reference) for each key, or None where an entry it needs
        is missing or damaged], the damaged entries' paths). The image is None for a file that could not be
        decoded; the LR reference, without `references` or for an image that is not used."""
        opened, damaged = [], []
        for key in keys:
            hr = self.entry("hr", key, damaged)
            wanted = hr is not None and references and not image_files.unusable(hr[0]["shape"], min_size)
            lr = self.entry("lr", lr_key(key, self.scale), damaged) if wanted else (None, None)
            opened.append(None if hr is None or lr is None else (*hr, lr[1]))
        return opened, damaged

    def entry(self, kind, key, damaged):
        """(fields, its array or None) of an entry, or None when it is missing or damaged (then its path
        joins `damaged`)."""
        path = self.folder / kind / key
        try:
            fields, arrays = array_file.read(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except array_file.Damaged:  # cut short, or a garbled index: made again
            damaged.append(path)
            return None
        except OSError as err:  # refused, an I/O error, no mapping left: remaking it would not help
            raise Unreadable(cannot_read(path, err)) from None
        return fields, arrays[0] if arrays else None

    def build(self, missing, min_size, references):
        """Make the entries of `missing` [(path, HR key)], a process per core: a progress bar, then a line.
        Returns {path: why} of the files that could not be read this time (no entry made). A process that
        dies is a UserError: decoding into memory instead would need more of what it likely lacked."""
        try:
            for kind in ("hr", "lr"):
                (self.folder / kind).mkdir(parents=True, exist_ok=True)
            remove_leftovers(self.folder)
        except OSError as err:
            raise Unwritable(f"cannot create the data cache in {self.folder} ({err.strerror})") from None
        scale = self.scale if references else None
        jobs = [(path, self.folder, key, scale, min_size) for path, key in missing]
        processes = min(len(jobs), len(os.sched_getaffinity(0)))
        start, written, not_read = time.perf_counter(), 0, {}
        # An executor, not multiprocessing.Pool: a worker that dies (the out-of-memory killer, a SIGBUS) breaks
        # it, where a Pool waits forever for that worker's image.
        pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"))
        try:
            # Every worker forked at the first submit, before the bar's thread starts; they use numpy and PIL only.
            futures = [pool.submit(make_entries, job) for job in jobs]
            with self.progress(len(jobs)) as made:
                for future in as_completed(futures):
                    path, size, why = future.result()
                    written += size
                    if why:
                        not_read[path] = why
                    made()
        except BrokenProcessPool:
            raise UserError(
                f"a process building the data cache in {self.folder} died (killed, most likely for want of memory: "
                "see dmesg); the entries made so far are kept: free memory on this machine, then start the job again"
            ) from None
        except OSError as err:
            where = err.filename or self.folder
            if err.errno == errno.ENOMEM:  # a worker's mapping, on top of those it inherited
                raise Unreadable(cannot_read(where, err)) from None
            raise Unwritable(f"cannot write the data cache in {where} ({err.strerror})") from None
        finally:  # after a failure, the images not begun are not made
            pool.shutdown(cancel_futures=True)
        seconds = time.perf_counter() - start
        self.log(
            f"data cache: {len(jobs)} images cached in {seconds:.1f} s by {processes} processes "
            f"({len(jobs) / seconds:.1f} images/s), {written / 2**30:.2f} GiB written to {self.folder}"
        )
        return not_read


def set_folder(paths):
    """The folder the keys are taken within: the deepest that holds every one of `paths` (read_folder's set,
    searched recursively), so that seq1/frame.png and seq2/frame.png are two entries, and a set mounted at
    another path (another node) finds the same ones."""
    return os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in paths]) if paths else ""


def cannot_read(path, err):
    """The one line for an entry that cannot be read or mapped (`err`, an OSError)."""
    if err.errno == errno.ENOMEM:
        return (
            f"cannot map the data cache's entry {path} (Cannot allocate memory): a process may hold "
            f"vm.max_map_count{max_map_count()} mappings and each entry is one; raise it (sysctl -w "
            "vm.max_map_count=N) or use --data-cache off"
        )
    return f"cannot read the data cache's entry {path} ({err.strerror})"


def max_map_count():
    """The kernel's limit on a process's mappings as " = N", or "" where /proc does not say."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return f" = {f.read().strip()}"
    except OSError:
        return ""


def hr_key(path, root):
    """The HR entry's name of an image file: its path within `root`, size and modification time, and the
    decode rule."""
    within = Path(os.path.relpath(os.path.abspath(path), root)).as_posix()
    try:
        stat = os.stat(path)
    except OSError:  # gone since it was listed: its build cannot read it, makes no entry and skips it this job
        return digest(within, "unreadable", DECODE_RULE)
    return digest(within, stat.st_size, stat.st_mtime_ns, DECODE_RULE)


def lr_key(hr, scale):
    return digest(hr, f"x{scale}", RESIZE_RULE)


def make_entries(job):
    """One image's missing entries: its HR (decoded, unless its entry exists: a new scale) and, when
    `scale` is given and the image is used, its LR reference. Returns (path, the bytes written, why the
    file could not be read this time or None): such a file gets no entry."""
    path, folder, key, scale, min_size = job
    written = 0
    try:
        fields, arrays = array_file.read(folder / "hr" / key)
        hr = arrays[0] if arrays else None
    except (FileNotFoundError, array_file.Damaged):
        try:
            hr, mode = image_files.decode(path)
        except OSError as err:
            return path, 0, image_files.not_read(err)
        fields = {"source": Path(path).name, "mode": mode, "shape": None if hr is None else hr.shape}
        written += write_entry(folder / "hr" / key, fields, [] if hr is None else [hr])
    if scale and not image_files.unusable(fields["shape"], min_size):
        lr = crops.training_pair(hr, scale)[1]
        written += write_entry(folder / "lr" / lr_key(key, scale), {"hr": key, "scale": scale}, [lr])
    return path, written, None


def write_entry(path, fields, arrays):
    """Written aside and renamed into place, so that an entry is whole or absent. Returns its size."""
    aside = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    aside.unlink(missing_ok=True)  # a leftover of a killed process that had this pid
    size = array_file.write(aside, fields, arrays, mode=0o666)  # the umask decides who may read the cache
    if not size:
        raise OSError(28, "no space left for the data cache", str(path.parent))
    os.replace(aside, path)
    return size


def remove_leftovers(folder):
    """The temporary files of this machine's builds that were killed before their rename."""
    host = socket.gethostname()
    for path in folder.glob("*/*.tmp"):
        writer, _, pid = path.name.removesuffix(".tmp").partition(".")[2].rpartition(".")
        if writer == host and pid.isdigit() and not alive(int(pid)):
            path.unlink(missing_ok=True)


def alive(pid):
    """Whether a process runs as `pid` on this machine; a zombie (killed, its parent not yet told) does not."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False
