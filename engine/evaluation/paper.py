"""The paper's PSNR-Y / SSIM-Y for IRN, which evaluated sets they belong to, and how ours compare.

Source: Xiao et al., "Invertible Image Rescaling", ECCV 2020 (arXiv 2005.05650), the IRN rows of its
x2 and x4 results table. The paper measures them as this project does (Y channel of BT.601 YCbCr,
8-bit images, `scale` border pixels cropped, 11x11 Gaussian SSIM) with the official test's sampled
z ~ N(0, 1): compare them with an evaluation's T=1 column, not with z = 0. The paper reports no x3 or
x8 numbers.

Sets are matched by name, ignoring case and punctuation, under their common spellings: `Set5`, `Set14`,
`BSD100` (`B100`, `BSDS100`), `Urban100` and the DIV2K validation set (`DIV2K_valid_HR`, `DIV2K val`,
`DIV2K_valid`); a bare `DIV2K` is not matched, since it may be the training set.

engine/evaluate.py asks `compare` for each set's entry in results.json, `cells` for its two table cells and
`note` for the line under the table.
"""

import re

SOURCE = 'Xiao et al., "Invertible Image Rescaling", ECCV 2020 (arXiv 2005.05650)'
COMPARED_WITH = "T=1"  # the evaluation column the paper's sampled-z numbers correspond to
Z = "sampled from N(0, 1)"  # how the paper's test draws z
COLUMNS = ("paper PSNR-Y / SSIM-Y", f"{COMPARED_WITH} − paper")  # the table's columns for the paper

SETS = ("Set5", "Set14", "BSD100", "Urban100", "DIV2K val")  # the paper's order and names

# scale -> set -> (PSNR-Y in dB, SSIM-Y)
RESULTS = {
    2: {
        "Set5": (43.99, 0.9871),
        "Set14": (40.79, 0.9778),
        "BSD100": (41.32, 0.9876),
        "Urban100": (39.92, 0.9865),
        "DIV2K val": (44.32, 0.9908),
    },
    4: {
        "Set5": (36.19, 0.9451),
        "Set14": (32.67, 0.9015),
        "BSD100": (31.64, 0.8826),
        "Urban100": (31.41, 0.9157),
        "DIV2K val": (35.07, 0.9318),
    },
}

ALIASES = {
    "Set5": ("set5",),
    "Set14": ("set14",),
    "BSD100": ("bsd100", "b100", "bsds100"),
    "Urban100": ("urban100",),
    "DIV2K val": ("div2kval", "div2kvalid", "div2kvalidhr", "div2kvalidation"),
}
_BY_KEY = {alias: name for name, aliases in ALIASES.items() for alias in aliases}


def set_name(name):
    """The paper's name of a set ('B100' -> 'BSD100', 'DIV2K_valid_HR' -> 'DIV2K val'), or None."""
    return _BY_KEY.get(re.sub(r"[^a-z0-9]", "", str(name).lower()))


def reported(name, scale):
    """The paper's (PSNR-Y, SSIM-Y) of a set (any spelling) at `scale`, or None where it reports none."""
    return RESULTS.get(scale, {}).get(set_name(name))


def compare(name, scale, ours):
    """The paper's cell of a set (any spelling) and our COMPARED_WITH scores' difference from it, or None where
    the paper reports none. `ours` maps an evaluation's column labels to their mean scores; without a
    COMPARED_WITH column the paper's cell stays but gets no difference, since another z is not like for like."""
    values = reported(name, scale) if name else None
    if values is None:
        return None
    same_z = ours.get(COMPARED_WITH)
    diff = {"psnr_y": same_z["psnr_y"] - values[0], "ssim_y": same_z["ssim_y"] - values[1]} if same_z else None
    return {
        "set": set_name(name),
        "psnr_y": values[0],
        "ssim_y": values[1],
        "compared_with": COMPARED_WITH if same_z else None,
        "difference": diff,
    }


def cells(entry):
    """The table's cells under COLUMNS for a `compare` entry: the paper's 'PSNR / SSIM' and ours minus the
    paper's, '—' where the paper or our COMPARED_WITH column has none."""
    if entry is None:
        return ["—", "—"]
    d = entry["difference"]
    return [f"{entry['psnr_y']:.2f} / {entry['ssim_y']:.4f}", f"{d['psnr_y']:+.2f} / {d['ssim_y']:+.4f}" if d else "—"]


def note(set_names, scale, columns):
    """The line under the table: what the paper's columns are, or why there are none; '' when none of the
    evaluated sets (their paper names, None for the others) is one the paper reports."""
    named = [name for name in set_names if name]
    if not named:
        return ""
    if scale not in RESULTS:
        return f"The paper reports {', '.join(dict.fromkeys(named))} at x2 and x4 only, none at x{scale}."
    text = (
        f"Paper: IRN in {SOURCE}, with z {Z} (the official test), so it stands beside "
        f"our {COMPARED_WITH} column; difference = ours − paper."
    )
    if COMPARED_WITH not in columns:
        text += f" This evaluation has no {COMPARED_WITH} column to compare (use --z sample with 1 in --temperature)."
    return text


def about():
    """results.json's record of what the paper's cells are."""
    return {"source": SOURCE, "z": Z, "compared_with": COMPARED_WITH}
