"""The published PSNR-Y / SSIM-Y of image rescaling under JPEG on DIV2K val, and how ours compare.

Source: Yang et al., "Self-Asymmetric Invertible Network for Compression-Aware Image Rescaling" (SAIN), AAAI
2023 (arXiv 2303.02353): the two DIV2K tables ("Quantitative results (PSNR / SSIM) of image rescaling on
DIV2K under distortion at different JPEG QFs", x2 and x4) of its README, github.com/yang-jin-hai/SAIN. Its
test encodes the 8-bit LR with Pillow at the given quality and Pillow's defaults, as engine/data/codec.py
does, and scores the Y channel with `scale` border pixels cropped, as this project does. The rows kept here:
Bicubic & Bicubic, IRN (the ECCV 2020 IRN, no restoration module), HCFlow (the x4 table only: the x2 table has
no HCFlow row) and SAIN. The README does not say how z was drawn for the IRN row; the official IRN test
samples z ~ N(0, 1), so the rows stand beside our T=1 column. The tables report no WebP numbers.

engine/evaluate.py asks `compare` for a set's published rows and our differences from them.
"""

from engine.evaluation import paper

SOURCE = (
    'Yang et al., "Self-Asymmetric Invertible Network for Compression-Aware Image Rescaling", AAAI 2023 '
    "(arXiv 2303.02353), README of github.com/yang-jin-hai/SAIN"
)
SET = "DIV2K val"  # the only set the tables report (paper.py's name for it)
CODEC = "jpeg"
COMPARED_WITH = "T=1"
QUALITIES = (30, 50, 70, 80, 90)

# scale -> method -> (PSNR-Y, SSIM-Y) at each of QUALITIES, from the README's DIV2K tables
RESULTS = {
    2: {
        "Bicubic & Bicubic": ((29.38, 0.8081), (30.19, 0.8339), (30.91, 0.8560), (31.38, 0.8703), (31.96, 0.8878)),
        "IRN": ((29.24, 0.8051), (30.20, 0.8342), (31.14, 0.8604), (31.86, 0.8783), (32.91, 0.9023)),
        "SAIN": ((31.47, 0.8747), (33.17, 0.9082), (34.73, 0.9296), (35.46, 0.9374), (35.96, 0.9419)),
    },
    4: {
        "Bicubic & Bicubic": ((26.27, 0.6945), (26.81, 0.7140), (27.28, 0.7326), (27.57, 0.7456), (27.90, 0.7618)),
        "IRN": ((25.98, 0.6867), (26.62, 0.7096), (27.24, 0.7328), (27.72, 0.7508), (28.42, 0.7777)),
        "HCFlow": ((25.89, 0.6838), (26.38, 0.7029), (26.79, 0.7204), (27.05, 0.7328), (27.41, 0.7485)),
        "SAIN": ((27.90, 0.7745), (29.05, 0.8088), (29.83, 0.8272), (30.13, 0.8331), (30.31, 0.8367)),
    },
}


def reported(name, scale, codec_name, quality):
    """{method: (PSNR-Y, SSIM-Y)} published for a set (any spelling) at `scale` under `codec_name` at `quality`,
    or {} where the tables have none."""
    if codec_name != CODEC or quality not in QUALITIES or paper.set_name(name) != SET:
        return {}
    column = QUALITIES.index(quality)
    return {method: values[column] for method, values in RESULTS.get(scale, {}).items()}


def compare(name, scale, codec_name, summaries):
    """{method: {quality: {"psnr_y", "ssim_y", "difference"}}} for the qualities of `summaries`
    (compression.summarise_qualities) that the tables report; difference = our COMPARED_WITH scores minus the
    published ones (None without that column). None where no quality is reported."""
    rows = {}
    for quality, summary in summaries.items():
        ours = summary["settings"].get(COMPARED_WITH)
        for method, (psnr, ssim) in reported(name, scale, codec_name, quality).items():
            difference = {"psnr_y": ours["psnr_y"] - psnr, "ssim_y": ours["ssim_y"] - ssim} if ours else None
            rows.setdefault(method, {})[quality] = {"psnr_y": psnr, "ssim_y": ssim, "difference": difference}
    return rows or None


def note(compared, scale, columns):
    """The line under a codec table: where its published rows come from, or '' when it has none."""
    if not compared:
        return ""
    text = f"Published rows: {SOURCE}, DIV2K val at x{scale}; difference = our {COMPARED_WITH} − published."
    if COMPARED_WITH not in columns:
        text += f" This evaluation has no {COMPARED_WITH} column to compare (use --z sample with 1 in --temperature)."
    return text


def about():
    """results.json's record of what the published rows are."""
    return {"source": SOURCE, "set": SET, "compared_with": COMPARED_WITH}
