"""The data cache on real files: the sets it maps equal the decoded ones, it remakes only what changed, it
survives a build killed part way, and a cache that cannot be written is one line."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data import array_file, cache, crops, image_files
from tests.conftest import smooth_image


def write_images(folder, count=4, seed=0):
    """Pillow-written PNGs of sides that are not multiples of the scale, and what read_folder converts or
    skips: an RGBA, a grayscale and a 16-bit image, a corrupt and a tiny one, a text file."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(smooth_image(rng, 37 + 6 * i, 45)).save(folder / f"img{i}.png")
    rgb = smooth_image(rng, 33, 34)
    Image.fromarray(np.dstack([rgb, np.full((33, 34), 200, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(rgb[..., 1]).save(folder / "gray.png")
    Image.fromarray(rgb[..., 2].astype(np.uint16) * 257).save(folder / "deep.png")
    Image.fromarray(rgb[:10, :10]).save(folder / "tiny.png")
    (folder / "cut.png").write_bytes((folder / "img0.png").read_bytes()[:200])
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture
def decodes(tmp_path, monkeypatch):
    """The names of the files decoded from now on, in any process (the build's workers are forked)."""
    log = tmp_path / "decodes.txt"
    log.touch()
    decode = image_files.decode

    def counted(path):
        with open(log, "a") as f:
            f.write(f"{os.path.basename(path)}\n")
        return decode(path)

    monkeypatch.setattr(image_files, "decode", counted)

    def taken():
        names = sorted(log.read_text().split())
        log.write_text("")
        return names

    return taken


def equal_sets(a, b):
    same_arrays = all(
        x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip([*a.hrs, *a.lrs], [*b.hrs, *b.lrs], strict=True)
    )
    return (a.names, a.skipped, a.converted) == (b.names, b.skipped, b.converted) and same_arrays


def test_crops_from_the_cache_equal_crops_from_memory_bit_for_bit(tmp_path):
    folder = write_images(tmp_path / "hr")
    for build in ("cold", "warm"):
        cached = image_files.read_folder(folder, 16, cache.Cache(tmp_path / "cache", 4, log=print).training)
        decoded = image_files.read_folder(folder, 16, crops.Decoded(4).training)
        assert equal_sets(cached, decoded), build
        assert cached.converted == {"I;16": ["deep.png"], "L": ["gray.png"], "RGBA": ["rgba.png"]}
        assert cached.skipped == {
            "corrupt or unreadable": ["cut.png"], "smaller than 16x16": ["tiny.png"], "not an image file": ["notes.txt"]
        }  # fmt: skip
        from_cache, from_memory = (crops.CropDataset(s, 16, seed=3, scale=4) for s in (cached, decoded))
        for i in range(100):
            a, b = from_cache[i], from_memory[i]
            assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a), (build, i)
    val = image_files.read_folder(folder, 1, cache.Cache(tmp_path / "cache", 4).images)
    assert val.names == image_files.read_folder(folder).names
    assert all(np.array_equal(x, y) for x, y in zip(val.images, image_files.read_folder(folder).images, strict=True))


def test_a_changed_or_added_file_or_a_new_scale_remakes_only_what_it_changes(tmp_path, decodes):
    folder, entries = write_images(tmp_path / "hr"), tmp_path / "cache"
    image_files.read_folder(folder, 16, cache.Cache(entries, 2).training)
    assert len(decodes()) == 9  # every image file, once
    files = {p: p.stat().st_ino for p in entries.rglob("*")}
    rng = np.random.default_rng(7)
    Image.fromarray(smooth_image(rng, 50, 40)).save(folder / "img1.png")
    Image.fromarray(smooth_image(rng, 30, 31)).save(folder / "new.png")
    found = image_files.read_folder(folder, 16, cache.Cache(entries, 2).training)
    assert decodes() == ["img1.png", "new.png"]
    assert equal_sets(found, image_files.read_folder(folder, 16, crops.Decoded(2).training))
    assert all(p.stat().st_ino == ino for p, ino in files.items())  # the other entries: the same files
    decodes()  # (those of the comparison)
    image_files.read_folder(folder, 16, cache.Cache(entries, 4).training)
    assert decodes() == []  # a new scale makes LR references from the HR entries
    assert len(list((entries / "lr").iterdir())) == 9 + 8  # x2 of 7 usable images, img1's new one and new.png; x4


def test_a_file_that_cannot_be_read_now_is_skipped_this_time_and_read_the_next(tmp_path, monkeypatch, decodes):
    """A read refused (as a file with no read permission is, or an I/O error) is not the file's content: it
    gets no entry, so once the file reads again it is decoded and used, although its name, size and
    modification time are those it had."""
    folder, entries = write_images(tmp_path / "hr"), tmp_path / "cache"
    to_rgb8 = image_files.to_rgb8

    def refused(path):
        if os.path.basename(path) == "img1.png":
            raise PermissionError(13, "Permission denied", str(path))
        return to_rgb8(path)

    monkeypatch.setattr(image_files, "to_rgb8", refused)  # before the build's workers fork: theirs too
    found = image_files.read_folder(folder, 16, cache.Cache(entries, 2).training)
    assert found.skipped["could not be read (Permission denied)"] == ["img1.png"] and "img1.png" not in found.names
    monkeypatch.setattr(image_files, "to_rgb8", to_rgb8)
    decodes()
    found = image_files.read_folder(folder, 16, cache.Cache(entries, 2).training)
    assert decodes() == ["img1.png"]
    assert equal_sets(found, image_files.read_folder(folder, 16, crops.Decoded(2).training))


KILLED_BUILD = """
import os, sys, time
from engine.data import cache, image_files

fdatasync = os.fdatasync

def slowly(fd):  # an entry written aside, not yet renamed into place
    time.sleep(0.4)
    fdatasync(fd)

os.fdatasync = slowly
image_files.read_folder(sys.argv[1], 16, cache.Cache(sys.argv[2], 2).training)
"""


def header(path):
    with open(path, "rb") as f:
        return json.loads(f.read(int.from_bytes(f.read(8), "little")))


def test_a_build_killed_part_way_and_a_truncated_entry_are_found_and_made_again(tmp_path, decodes):
    folder, entries = write_images(tmp_path / "hr", count=6), tmp_path / "cache"
    build = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(folder), str(entries)], start_new_session=True)
    deadline = time.monotonic() + 60
    while not (list(entries.glob("hr/*[!p]")) and list(entries.glob("*/*.tmp"))):  # a whole entry, one being written
        assert build.poll() is None and time.monotonic() < deadline, "the build ended before it could be killed"
        time.sleep(0.005)
    os.killpg(build.pid, signal.SIGKILL)  # the process and its workers, as at a job's end
    build.wait()
    with pytest.raises(ProcessLookupError):  # its workers too, once the kernel has ended them
        while time.monotonic() < deadline:
            os.killpg(build.pid, 0)
            time.sleep(0.01)
    whole = [p for p in entries.glob("hr/*") if not p.name.endswith(".tmp")]
    assert 1 <= len(whole) < 10
    truncated = whole[0]
    with open(truncated, "r+b") as f:
        f.truncate(truncated.stat().st_size // 2)
    lines = []
    found = image_files.read_folder(folder, 16, cache.Cache(entries, 2, log=lines.append).training)
    decoded_before = {header(p)["source"] for p in whole[1:]}
    assert decodes() == sorted({p.name for p in folder.glob("*.png")} - decoded_before)
    assert lines[0] == f"data cache: made again, 1 damaged: {truncated}"
    assert not list(entries.glob("*/*.tmp"))  # the killed workers' files: removed
    assert equal_sets(found, image_files.read_folder(folder, 16, crops.Decoded(2).training))


def test_a_cache_that_cannot_be_written_is_one_line_and_leaves_nothing_behind(tmp_path, monkeypatch):
    folder = write_images(tmp_path / "hr", count=1)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(cache.Unwritable, match=r"^cannot create the data cache in .*a_file/cache \(Not a directory\)$"):
        image_files.read_folder(folder, 16, cache.Cache(tmp_path / "a_file" / "cache", 2).training)
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(2**30, 2**30 - 10, 10))
    with pytest.raises(cache.Unwritable, match=r"^cannot write the data cache in .*/hr \(no space left for"):
        image_files.read_folder(folder, 16, cache.Cache(tmp_path / "cache", 2).training)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_same_named_files_in_two_subfolders_are_two_entries(tmp_path):
    """As tar and unzip leave a set of sequences: seq1/frame.png and seq2/frame.png, other images of the same
    size and modification time. Each is served as decoded, not the one cached first for both."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "hr"
    for sequence in ("seq1", "seq2"):
        (folder / sequence).mkdir(parents=True)
        Image.fromarray(smooth_image(rng, 40, 44)).save(folder / sequence / "frame.png", compress_level=0)
    first, second = folder / "seq1" / "frame.png", folder / "seq2" / "frame.png"
    assert first.stat().st_size == second.stat().st_size  # raw-stored PNGs of one shape: the same size
    os.utime(second, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns))
    decoded = image_files.read_folder(folder, 16, crops.Decoded(2).training)
    assert not np.array_equal(decoded.hrs[0], decoded.hrs[1])
    for build in ("cold", "warm"):
        cached = image_files.read_folder(folder, 16, cache.Cache(tmp_path / "cache", 2).training)
        assert equal_sets(cached, decoded), build


def test_entries_are_found_again_wherever_the_set_is_mounted(tmp_path, decodes):
    """Nodes that mount a set at different paths share its entries: the key is the path within the set."""
    write_images(tmp_path / "here" / "set")
    image_files.read_folder(tmp_path / "here" / "set", 16, cache.Cache(tmp_path / "cache", 2).training)
    decodes()
    shutil.copytree(tmp_path / "here", tmp_path / "there" / "mount", copy_function=shutil.copy2)  # mtimes kept
    found = image_files.read_folder(
        tmp_path / "there" / "mount" / "set", 16, cache.Cache(tmp_path / "cache", 2).training
    )
    assert decodes() == []
    assert equal_sets(found, image_files.read_folder(tmp_path / "here" / "set", 16, crops.Decoded(2).training))


def test_an_entry_with_a_garbage_header_length_is_made_again(tmp_path):
    """The first 8 bytes say how long the index is; 0xff... (2**64 - 1) is past the file's end: damaged."""
    folder, entries = write_images(tmp_path / "hr", count=1), tmp_path / "cache"
    image_files.read_folder(folder, 16, cache.Cache(entries, 2).training)
    garbled = sorted((entries / "hr").iterdir())[0]
    with open(garbled, "r+b") as f:
        f.write(b"\xff" * 8)
    with pytest.raises(array_file.Damaged, match="index of 18446744073709551615 bytes"):
        array_file.read(garbled)
    lines = []
    found = image_files.read_folder(folder, 16, cache.Cache(entries, 2, log=lines.append).training)
    assert lines[0] == f"data cache: made again, 1 damaged: {garbled}"
    assert equal_sets(found, image_files.read_folder(folder, 16, crops.Decoded(2).training))


def cached_sets_said(folder, entries):
    """What the trainer's start-up logs and returns for the set in `folder` read through the cache."""
    from engine.training import config, start

    cfg = config.resolve(["--data", str(folder), "--crop", "16", "--scale", "2"])[0]
    lines = []
    sets = start.cached_sets(cfg, cache.Cache(entries, 2, log=lines.append), lines.append)
    return sets, lines


def test_an_entry_refused_on_reading_is_one_line_and_the_job_decodes_into_memory(tmp_path, monkeypatch):
    """A cache another user built under umask 077 refuses its entries (tests run as root, for whom a mode
    refuses nothing: the refusal is made here). Not damage: one line naming the entry, nothing rewritten."""
    folder, entries = write_images(tmp_path / "hr", count=1), tmp_path / "cache"
    image_files.read_folder(folder, 16, cache.Cache(entries, 2).training)
    files = {p: p.stat().st_ino for p in entries.rglob("*")}
    real_open = open

    def refused(path, *args, **kwargs):
        if str(path).startswith(str(entries)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(array_file, "open", refused, raising=False)
    sets, lines = cached_sets_said(folder, entries)
    assert sets is None and len(lines) == 1
    first = [p for p in files if p.parent.name == "hr"]  # the entry read first: one of the HR entries
    assert any(
        lines[0] == f"[yellow]cannot read the data cache's entry {p} (Permission denied): the images are decoded "
        "into memory for this job"
        for p in first
    ), lines
    assert {p: p.stat().st_ino for p in entries.rglob("*")} == files


def test_a_mapping_refused_for_want_of_vm_max_map_count_is_one_line_and_the_job_decodes_into_memory(
    tmp_path, monkeypatch
):
    """Past vm.max_map_count mappings a process maps no more: torch.from_file raises "unable to mmap ...:
    Cannot allocate memory (12)". One line that names the limit and --data-cache off; nothing is remade."""
    folder, entries = write_images(tmp_path / "hr", count=1), tmp_path / "cache"
    image_files.read_folder(folder, 16, cache.Cache(entries, 2).training)
    files = {p: p.stat().st_ino for p in entries.rglob("*")}

    def no_mapping_left(filename, shared, size, dtype):
        raise RuntimeError(f"unable to mmap {size} bytes from file <{filename}>: Cannot allocate memory (12)")

    monkeypatch.setattr(torch, "from_file", no_mapping_left)
    with open("/proc/sys/vm/max_map_count") as f:
        limit = f.read().strip()
    sets, lines = cached_sets_said(folder, entries)
    assert sets is None and len(lines) == 1
    assert lines[0].startswith("[yellow]cannot map the data cache's entry ") and lines[0].endswith(
        f" (Cannot allocate memory): a process may hold vm.max_map_count = {limit} mappings and each entry is one; "
        "raise it (sysctl -w vm.max_map_count=N) or use --data-cache off: the images are decoded into memory for "
        "this job"
    ), lines
    assert {p: p.stat().st_ino for p in entries.rglob("*")} == files


DYING_WORKER = """
import os, signal, sys
from engine.data import cache, image_files
from engine.errors import UserError

decode = image_files.decode

def dying(path):  # as the out-of-memory killer ends a worker
    if os.path.basename(path) == "img1.png":
        os.kill(os.getpid(), signal.SIGKILL)
    return decode(path)

image_files.decode = dying
try:
    image_files.read_folder(sys.argv[1], 16, cache.Cache(sys.argv[2], 2, log=lambda line: None).training)
except UserError as err:
    print(err)
"""


def test_a_build_process_killed_is_one_line_not_a_build_that_waits_forever(tmp_path):
    folder, entries = write_images(tmp_path / "hr"), tmp_path / "cache"
    build = subprocess.Popen(
        [sys.executable, "-c", DYING_WORKER, str(folder), str(entries)], stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = build.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(build.pid, signal.SIGKILL)
        build.wait()
        pytest.fail("the build still waited 60 s after one of its processes was killed")
    assert out.splitlines() == [
        f"a process building the data cache in {entries} died (killed, most likely for want of memory: see "
        "dmesg); the entries made so far are kept: free memory on this machine, then start the job again"
    ]
