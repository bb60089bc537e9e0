"""The paper's PSNR-Y / SSIM-Y for IRN, and which evaluated sets they belong to.

Source: Xiao et al., "Invertible Image Rescaling", ECCV 2020 (arXiv 2005.05650), the IRN rows of its
x2 and x4 results table, as copied into /work/shared/irn-reference.md ("Evaluation conventions"). The
paper measures them as this project does (Y channel of BT.601 YCbCr, 8-bit images, `scale` border pixels
cropped, 11x11 Gaussian SSIM) with the official test's sampled z ~ N(0, 1): compare them with an
evaluation's T=1 column, not with z = 0. The paper reports no x3 or x8 numbers.

Sets are matched by name, ignoring case and punctuation, under their common spellings: `Set5`, `Set14`,
`BSD100` (`B100`, `BSDS100`), `Urban100` and the DIV2K validation set (`DIV2K_valid_HR`, `DIV2K val`,
`DIV2K_valid`); a bare `DIV2K` is not matched, since it may be the training set.
"""

import re

SOURCE = 'Xiao et al., "Invertible Image Rescaling", ECCV 2020 (arXiv 2005.05650)'
COMPARED_WITH = "T=1"  # the evaluation column the paper's sampled-z numbers correspond to

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
