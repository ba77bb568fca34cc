"""Unit tests of the reproducibility comparison and of the offline plots template (no DVC run)."""

import re

import pytest

from detoxrl import DetoxError
from detoxrl_tools.plots_page import VEGA_PACKAGES, render_template
from detoxrl_tools.repro_check import compare_metrics, flatten


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


def test_across_cpu_kinds_headline_metrics_are_held_to_their_confidence_intervals():
    from detoxrl_tools.repro_check import compare_within_ci, recorded_kind

    committed = {"toxicity": {"overall": {"expected_max_toxicity": {"value": 0.525, "ci_low": 0.486, "ci_high": 0.565},
                                          "toxicity_probability": {"value": 0.45, "ci_low": 0.36, "ci_high": 0.52}}},
                 "fluency": {"perplexity": 19.7},
                 "platform": {"device": "cpu", "cpu_kind": "x86_64/AuthenticAMD/AVX512+bf16"}}
    rerun = {"toxicity": {"overall": {"expected_max_toxicity": {"value": 0.522, "ci_low": 0.48, "ci_high": 0.56},
                                      "toxicity_probability": {"value": 0.44, "ci_low": 0.35, "ci_high": 0.51}}},
             "fluency": {"perplexity": 19.9}, "platform": {"device": "cpu", "cpu_kind": "x86_64/AuthenticAMD/AVX2"}}
    result = compare_within_ci(committed, rerun, "m.json")
    # the two CIs are checked; the perplexity and the CI bounds moved, which is expected and not a failure
    assert result.ok and result.mode == "ci" and result.ci_checked == 2 and result.changed == 7
    rerun["toxicity"]["overall"]["expected_max_toxicity"]["value"] = 0.60
    result = compare_within_ci(committed, rerun, "m.json")
    assert result.different == ["m.json:toxicity.overall.expected_max_toxicity: 0.6 outside the committed "
                                "0.525 [0.486, 0.565]"]
    assert recorded_kind(committed) == "x86_64/AuthenticAMD/AVX512+bf16" and recorded_kind({"steps": 2}) is None
    assert recorded_kind({"platform": {"device": "cuda", "gpu": "NVIDIA H100", "cpu_kind": "x"}}) == "cuda:NVIDIA H100"
