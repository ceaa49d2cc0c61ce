import csv
import io
import json
import math

from direct_nextaccel.benchmark.report import (
    METRIC_LABELS,
    FamilyTable,
    MethodRow,
    csv_text,
    format_value,
    json_document,
    markdown_report,
    markdown_table,
    write_reports,
)
from direct_nextaccel.metrics import METRICS, WEIGHTS_UNAVAILABLE


def small_table() -> FamilyTable:
    """Zero-filled, a perfect model (PSNR inf), a model without weights for LPIPS, and a failed model."""
    return FamilyTable(
        family="cartesian_y",
        acceleration="32",
        metrics=["psnr", "lpips"],
        contrasts=["T1", "T2"],
        volume_counts={"T1": 2, "T2": 1},
        rows=[
            MethodRow("Zero-filled (RSS)", {"psnr": {"T1": 20.123, "T2": 18.0}, "lpips": {"T1": 0.5, "T2": 0.61}}),
            MethodRow(
                "perfect",
                {"psnr": {"T1": math.inf, "T2": 30.0}, "lpips": {"T1": 0.0, "T2": 0.6}},
                seconds_per_slice=0.25,
                peak_memory_mib=812.4,
            ),
            MethodRow(
                "offline",
                {"psnr": {"T1": 25.5, "T2": 18.0}, "lpips": {"T1": WEIGHTS_UNAVAILABLE, "T2": WEIGHTS_UNAVAILABLE}},
                warnings=["its saved sampling_mask differs"],
            ),
            MethodRow("broken", error="checkpoint run/x does not exist"),
        ],
    )


def test_markdown_table_is_laid_out_like_the_paper_tables():
    expected = (
        "| Method | PSNR ↑ T1 | PSNR ↑ T2 | LPIPS ↓ T1 | LPIPS ↓ T2 | s/slice | Peak mem (MiB) |\n"
        "|:---|---:|---:|---:|---:|---:|---:|\n"
        "| Zero-filled (RSS) | 20.12 | 18.00 | 0.500 | 0.610 | — | — |\n"
        "| perfect | **inf** | **30.00** | **0.000** | **0.600** | 0.250 | 812 |\n"
        "| offline | 25.50 | 18.00 | n/a (weights unavailable) | n/a (weights unavailable) | — | — |\n"
        "| broken | failed: checkpoint run/x does not exist |  |  |  |  |  |"
    )
    assert markdown_table(small_table()) == expected


def test_markdown_report_has_a_title_counts_warnings_and_notes():
    report = markdown_report([small_table()], ["a note"])
    assert report.startswith("### cartesian_y, R = 32\n\n| Method |")
    assert "- Volumes per contrast: T1 2, T2 1. Peak memory: peak memory." in report
    assert "- offline: its saved sampling_mask differs\n" in report
    assert report.endswith("- a note\n")


def test_cells_with_a_pipe_are_escaped():
    table = small_table()
    table.rows[-1].error = "bad | value"
    assert "| broken | failed: bad \\| value |" in markdown_table(table)


def test_best_value_is_not_bold_when_only_one_method_has_numbers():
    table = small_table()
    table.rows = table.rows[:1]
    assert "**" not in markdown_table(table)


def test_csv_has_one_line_per_method_with_full_precision():
    rows = list(csv.DictReader(io.StringIO(csv_text([small_table()]))))
    assert [row["method"] for row in rows] == ["Zero-filled (RSS)", "perfect", "offline", "broken"]
    assert rows[0]["psnr_T1"] == "20.123"
    assert rows[1]["psnr_T1"] == "inf" and rows[1]["peak_memory_mib"] == "812.4"
    assert rows[2]["lpips_T2"] == WEIGHTS_UNAVAILABLE and rows[2]["seconds_per_slice"] == ""
    assert rows[3]["status"] == "failed" and rows[3]["error"] == "checkpoint run/x does not exist"
    assert rows[3]["psnr_T1"] == ""


def test_json_document_is_strict_json(tmp_path):
    paths = write_reports([small_table()], tmp_path / "out", {"device": "cpu"})
    document = json.loads(paths["json"].read_text())  # allow_nan=False when written: inf is a string
    assert document == json.loads(json.dumps(json_document([small_table()], {"device": "cpu"})))
    rows = document["families"]["cartesian_y"]["rows"]
    assert rows[1]["scores"]["psnr"]["T1"] == "inf"
    assert rows[3] == {
        "method": "broken",
        "status": "failed",
        "error": "checkpoint run/x does not exist",
        "scores": {},
        "seconds_per_slice": None,
        "peak_memory_mib": None,
        "warnings": [],
        "volumes": [],
    }
    assert paths["markdown"].read_text().startswith("### cartesian_y")
    assert paths["csv"].read_text().startswith("family,method,status,error,psnr_T1")


def test_every_metric_has_a_label_and_a_format():
    assert set(METRIC_LABELS) == set(METRICS)
    assert format_value("psnr", 31.456) == "31.46"
    assert format_value("nmse", 0.012345) == "0.0123"
    assert format_value("ssim", 0.91234) == "0.912"
    assert format_value("psnr", -math.inf) == "-inf"
