"""The server-drawn SVG charts: labels are escaped, gridlines fall on whole numbers, bars scale to the top."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ElementTree

import pytest

from prepaid.web.charts import legend, stacked_bars

SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: object) -> ElementTree.Element:
    return ElementTree.fromstring(str(svg))  # noqa: S314 (our own output, not untrusted input)


def _axis_labels(svg: str) -> list[str]:
    return re.findall(r'text-anchor="end">([^<]*)<', svg)


@pytest.mark.parametrize("largest", [1, 2, 3, 7, 10, 45, 100, 999, 12_345])
def test_gridlines_are_whole_numbers_from_zero_to_a_round_top_at_or_above_the_largest_bar(
    largest: int,
) -> None:
    labels = [int(label) for label in _axis_labels(str(stacked_bars(["d"], {"a": [largest]}, title="t")))]
    assert labels[0] == 0 and labels[-1] >= largest
    steps = {b - a for a, b in itertools.pairwise(labels)}
    assert len(steps) == 1 and steps.pop() > 0


def test_markup_in_names_titles_and_categories_is_text_and_the_svg_parses() -> None:
    hostile = '<script>alert(1)</script><svg onload="alert(2)">'
    svg = str(stacked_bars([hostile], {hostile: [5]}, title=hostile)) + str(legend([hostile]))
    assert "<script>" not in svg and "<svg onload" not in svg
    title = _parse(stacked_bars([hostile], {hostile: [5]}, title=hostile)).find(f"{SVG}title")
    assert title is not None and title.text == hostile


def test_segments_stack_in_proportion_and_zero_or_negative_values_draw_nothing() -> None:
    root = _parse(stacked_bars(["mon", "tue"], {"a": [30, 0], "b": [10, -5]}, title="t"))
    heights = [float(rect.attrib["height"]) for rect in root.iter(f"{SVG}rect")]
    assert len(heights) == 2  # a on Monday and b on Monday; nothing for Tuesday
    assert heights[0] == pytest.approx(3 * heights[1])


def test_an_empty_period_says_so() -> None:
    assert "Nothing in this period" in str(stacked_bars([], {}, title="t"))
