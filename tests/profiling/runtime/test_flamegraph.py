import re

from profiling.runtime.flamegraph import read_collapsed, to_speedscope, to_svg

RAW = (
    "main (t.py:1);train (t.py:5);forward (m.py:3) 30\n"
    "main (t.py:1);train (t.py:5);backward (m.py:9) 60\n"
    "main (t.py:1) 10\n"
    "broken line\n"
)


def test_collapsed_stacks_to_speedscope_keep_every_sample():
    stacks = read_collapsed(RAW)
    assert stacks[2] == (["main (t.py:1)"], 10) and len(stacks) == 3
    doc = to_speedscope(stacks, unit_ms=10.0)
    names = [f["name"] for f in doc["shared"]["frames"]]
    profile = doc["profiles"][0]
    assert profile["endValue"] == 1000.0 and profile["weights"] == [300.0, 600.0, 100.0]
    assert [names[i] for i in profile["samples"][1]] == ["main (t.py:1)", "train (t.py:5)", "backward (m.py:9)"]


def test_flame_graph_widths_follow_sample_shares():
    svg = to_svg(read_collapsed(RAW), width=1000)
    widths = {
        m[0]: float(m[1])
        for m in re.findall(r"<title>([^<]+?) \(\d+ samples?[^<]*</title><rect [^>]*width=\"([\d.]+)\"", svg)
    }
    assert widths["all"] == 1000.0 and widths["main (t.py:1)"] == 1000.0
    assert (
        widths["backward (m.py:9)"] == 600.0
        and widths["forward (m.py:3)"] == 300.0
        and widths["train (t.py:5)"] == 900.0
    )


def test_a_single_sample_is_counted_in_the_singular():
    svg = to_svg(read_collapsed("main (t.py:1) 1\n"), title="py-spy")
    assert "py-spy (1 sample)</text>" in svg and "<title>main (t.py:1) (1 sample, 100.0%)</title>" in svg
