"""The benchmark sets in the folders `--data` names, and their HR images (never the LR images beside them).

A --data folder, optionally named (`NAME=DIR`), is one of three things:

- a folder of benchmark sets (benchmark/ with Set5/, B100/, DIV2K/DIV2K_valid_HR/, ...): every set the paper
  reports (engine/evaluation/paper.py) becomes one set under the paper's name, found one or two folders down;
- one benchmark set's folder, its HR images in a subfolder of their own: HR/ (EDSR's layout), GTmod12/
  (BasicSR's), original/, or image_SRF_N/ with *_HR.png beside *_LR.png (Huang et al.'s);
- a plain folder of images: every image under it, except those in folders named like LR ones (LR_bicubic/X2).
"""

import re
from dataclasses import dataclass
from pathlib import Path

from engine.data import image_files
from engine.errors import UserError
from engine.evaluation import paper

HR_FOLDERS = ("HR", "GTmod12", "original")  # where a benchmark set keeps its HR images, first one found wins
SRF_FOLDER = re.compile(r"image_SRF_(\d+)", re.IGNORECASE)  # Huang et al.'s layout: *_HR.png beside *_LR.png
LR_FOLDER = re.compile(r"(.*_)?lr(_.*|bicx?\d+|x\d+|\d+)?|x\d+", re.IGNORECASE)  # LR_bicubic, LRbicx2, X4, ..._LR


@dataclass
class EvalSet:
    name: str  # the table's row
    paper_set: str | None  # the paper's name of the set, where it reports one
    folder: Path | None  # where its HR images were read (None: the embedded images)
    found: image_files.ImageSet
    note: str  # how they were picked, when not simply every image under the folder

    def describe(self, root=None):
        where = self.folder.relative_to(root) if root else self.folder
        return f"{self.name} in {where} ({len(self.found.images)} images{', ' + self.note if self.note else ''})"


def load_sets(specs, scale, min_size):
    """The --data folders as the table's sets, and one line that says which sets were found where."""
    sets, said = [], []
    for label, folder in parse_data(specs):
        refuse_missing(folder)
        found, ignored = ({}, []) if is_set_folder(folder) else find_sets(folder)
        if found:
            new, line = read_found_sets(label, folder, found, ignored, scale, min_size)
        else:
            new, line = read_one_set(label, folder, scale, min_size)
        sets += new
        said.append(line)
    refuse_names_twice(sets)
    return sets, "data: " + "; ".join(said)


def parse_data(specs):
    """['Set5=DIR', 'DIR'] -> [('Set5', Path(DIR)), (None, Path(DIR))]: the name, if one was given."""
    out = []
    for spec in specs:
        name, _, folder = spec.rpartition("=") if "=" in spec else ("", "", spec)
        if not folder:  # Path("") would be the current folder
            raise UserError(f"--data {spec}: no folder after the '='; give NAME=DIR or DIR")
        out.append((name or None, Path(folder)))
    return out


def refuse_missing(folder):
    if not folder.is_dir():
        raise UserError(
            f"no folder at {folder}; give a folder of HR images (e.g. DIV2K/DIV2K_valid_HR) "
            "or a folder of benchmark sets (Set5/, Set14/, B100/, Urban100/, ...)"
        )


def refuse_names_twice(sets):
    """Rows, image folders and results.json are keyed by the set's name, so two sets cannot share one."""
    names = [s.name for s in sets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"two sets are named {', '.join(twice)}; name each one with --data NAME=DIR")


def read_found_sets(label, root, found, ignored, scale, min_size):
    """A folder of benchmark sets: one set per set the paper reports, under the paper's name (after the label)."""
    sets = [read_set(f"{label}/{name}" if label else name, name, path, scale, min_size) for name, path in found.items()]
    line = f"{root}: " + ", ".join(s.describe(root) for s in sets)
    missing = [name for name in paper.SETS if name not in found]
    line += f"; not found: {', '.join(missing)}" if missing else ""
    line += f"; not used: {', '.join(str(p.relative_to(root)) for p in ignored)}" if ignored else ""
    return sets, line


def read_one_set(label, folder, scale, min_size):
    """One set's folder or a plain folder of images, named by the label, else the paper's or the folder's name."""
    own = set_folder_name(folder.resolve())
    paper_set = paper.set_name(label or own) or paper.set_name(own)
    found = read_set(label or paper_set or own, paper_set, folder, scale, min_size)
    return [found], found.describe()


def read_set(name, paper_set, folder, scale, min_size):
    return EvalSet(name, paper_set, *read_hr(folder, scale, min_size))


def subfolders(folder):
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def is_hr_subfolder(name):
    """Whether a set's subfolder named `name` holds its HR images (HR/, GTmod12/, original/, image_SRF_N/)."""
    return name.lower() in {n.lower() for n in HR_FOLDERS} or bool(SRF_FOLDER.fullmatch(name))


def is_set_folder(folder):
    """Whether `folder` is a benchmark set laid out with its HR images in a subfolder of their own."""
    return any(is_hr_subfolder(p.name) for p in subfolders(folder))


def find_sets(root):
    """The paper's sets among the folders under `root`, two levels deep: ({paper name: folder}, [ignored])."""
    found, ignored = {}, []
    for folder in subfolders(root):
        name = paper.set_name(folder.name)
        candidates = [(name, folder)] if name else [(paper.set_name(f.name), f) for f in subfolders(folder)]
        for name, path in candidates:
            if name in found:
                ignored.append(path)
            elif name:
                found[name] = path
    return {name: found[name] for name in paper.SETS if name in found}, ignored


def set_folder_name(folder):
    """The name a set's folder stands for: Set5/HR -> 'Set5' when the parent is a paper set, else the folder's."""
    inner = is_hr_subfolder(folder.name)
    return folder.parent.name if inner and paper.set_name(folder.parent.name) else folder.name


def read_hr(folder, scale, min_size):
    """The HR images of one set's folder, never its LR ones: (the folder they came from, ImageSet, note)."""
    by_name = {p.name.lower(): p for p in subfolders(folder)}
    for name in HR_FOLDERS:
        if name.lower() in by_name:
            return by_name[name.lower()], image_files.read_folder(by_name[name.lower()], min_size), ""
    srf = {int(m[1]): p for p in subfolders(folder) if (m := SRF_FOLDER.fullmatch(p.name))}
    if srf:
        return read_srf(srf, scale, min_size)
    return read_leaving_out_lr(folder, min_size)


def read_srf(srf, scale, min_size):
    """Huang et al.'s *_HR images from {factor: image_SRF_N folder}: each folder's HR images are cropped to a
    multiple of its factor, so this scale's folder is best, then one of a multiple of it, then the smallest."""
    where = srf[max(srf, key=lambda k: (k == scale, k % scale == 0, -k))]
    files = [p for p in sorted(where.iterdir()) if p.is_file() and p.stem.lower().endswith("_hr")]
    return where, read_files(where, files, min_size, "*_HR images"), "*_HR files"


def read_leaving_out_lr(folder, min_size):
    """Every image under `folder` except those in folders named like LR ones (LR_bicubic/X2, LRbicx2, ...)."""
    files = image_files.find_images(folder)
    hr = [f for f in files if not any(LR_FOLDER.fullmatch(part) for part in f.relative_to(folder).parts[:-1])]
    if len(hr) == len(files):
        return folder, image_files.read_folder(folder, min_size), ""  # a plain folder of images: every image under it
    return folder, read_files(folder, hr, min_size, "HR images"), f"{len(files) - len(hr)} files in LR folders left out"


def read_files(folder, files, min_size, what):
    images = [f for f in files if f.suffix.lower() in image_files.IMAGE_SUFFIXES]
    found = image_files.read_images(images, min_size)
    if not found.images:
        raise UserError(f"no usable {what} in {folder} ({image_files.describe_skipped(found.skipped)})")
    return found
