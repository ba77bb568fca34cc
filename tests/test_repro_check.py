"""Unit tests of the reproducibility comparison and of the offline plots template (no DVC run)."""

import re

import pytest

from detoxrl import DetoxError
from detoxrl.plots_page import VEGA_PACKAGES, render_template
from detoxrl.repro_check import compare_metrics, flatten


def test_flatten_nested_metrics():
    assert flatten({"a": {"b": 1, "c": [2, {"d": 3}]}}) == {"a.b": 1, "a.c.0": 2, "a.c.1.d": 3}


def test_identical_metrics_reproduce_and_wall_clock_keys_are_not_compared():
    committed = {"reward": 0.5, "time_step_s": 12.0, "eval": {"loss": 1.25, "name": "x"}}
    result = compare_metrics(committed, {**committed, "time_step_s": 9.0}, name="m.json")
    assert result.ok and result.compared == 3 and result.max_rel_diff == 0
    assert result.ignored == ["m.json:time_step_s"]


def test_a_changed_number_or_key_is_reported_unless_within_tolerance():
    committed = {"reward": 0.5, "kl": 1.0}
    assert not compare_metrics(committed, {"reward": 0.5000001, "kl": 1.0}).ok
    result = compare_metrics(committed, {"reward": 0.5000001, "kl": 1.0}, rtol=1e-6)
    assert result.ok and 0 < result.max_rel_diff < 1e-6
    result = compare_metrics(committed, {"reward": 0.5})
    assert result.different == ["kl: missing in rerun"]
    assert compare_metrics({"judge": "offline"}, {"judge": "detoxify"}).different == [
        "judge: 'offline' -> 'detoxify'"]


def test_offline_template_inlines_the_libraries_and_keeps_dvc_placeholders():
    page = render_template({"vega": "var vega = 1; // </script>", "vega-lite": "var vegaLite = 2;",
                            "vega-embed": "var vegaEmbed = 3;"})
    assert "{plot_divs}" in page and "{refresh_tag}" in page and "{scripts}" not in page
    assert "<\\/script>" in page and "var vegaEmbed = 3;" in page and "cdn" not in page
    assert page.index("var vega = 1") < page.index("var vegaLite") < page.index("var vegaEmbed")
    # The same versions as the CDN tags of DVC's own page (dvc-render), so the specs DVC writes render alike.
    from dvc_render.vega import VegaRenderer

    assert dict(re.findall(r"npm/([a-z-]+)@([0-9.]+)", VegaRenderer.SCRIPTS)) == VEGA_PACKAGES
    with pytest.raises(DetoxError, match="placeholder"):
        render_template({"vega": "x = '{plot_divs}'"})
