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
        "kind": "method",
        "status": "failed",
        "error": "checkpoint run/x does not exist",
        "scores": {},
        "memorisation": None,
        "flat_slices": 0,
        "seconds_per_slice": None,
        "peak_memory_mib": None,
        "warnings": [],
        "volumes": [],
    }
    assert paths["markdown"].read_text().startswith("### cartesian_y")
    assert paths["csv"].read_text().startswith("family,method,kind,status,error,psnr_T1")


def test_every_metric_has_a_label_and_a_format():
    assert set(METRIC_LABELS) == set(METRICS)
    assert format_value("psnr", 31.456) == "31.46"
    assert format_value("nmse", 0.012345) == "0.0123"
    assert format_value("ssim", 0.91234) == "0.912"
    assert format_value("psnr", -math.inf) == "-inf"


def test_bounds_and_flat_rows_are_marked_and_never_bold():
    """A bound sees the fully sampled data and an all-zero output can score a good SSIM: neither may be 'best'."""
    table = small_table()
    table.metrics, table.contrasts = ["psnr"], ["T1"]
    table.rows = [
        MethodRow("Zero-filled (RSS)", {"psnr": {"T1": 20.0}}, kind="reference"),
        MethodRow("model", {"psnr": {"T1": 25.0}}),
        MethodRow("aq-all-levels", {"psnr": {"T1": 40.0}}, kind="bound"),
        MethodRow("zeros", {"psnr": {"T1": 30.0}}, flat_slices=3),
    ]
    assert markdown_table(table).splitlines()[2:] == [
        "| Zero-filled (RSS) | 20.00 | — | — |",
        "| model | **25.00** | — | — |",
        "| aq-all-levels (bound) | 40.00 | — | — |",
        "| zeros | 30.00 | — | — |",
    ]
    rows = list(csv.DictReader(io.StringIO(csv_text([table]))))
    assert [row["kind"] for row in rows] == ["reference", "method", "bound", "method"]
    assert rows[2]["method"] == "aq-all-levels"  # the CSV keeps the bare name; the kind column marks it


def test_memorisation_columns_appear_with_a_training_folder():
    table = small_table()
    table.metrics, table.contrasts, table.rows = ["psnr"], ["T1"], table.rows[:2]
    assert "Corr own" not in markdown_table(table)
    table.training = "12 slices of 2 files in train (64x64)"
    table.target_memorisation = {
        "own": 1.0,
        "closest_training": 0.8123,
        "closer_to_training": 0,
        "slices": 6,
        "undefined": 0,
        "in_training": 0,
    }
    summary = {"own": 0.85, "closest_training": 0.97, "closer_to_training": 5, "slices": 6, "undefined": 0}
    table.rows[1].memorisation = summary
    lines = markdown_table(table).splitlines()
    assert lines[0] == (
        "| Method | PSNR ↑ T1 | Corr own ↑ | Corr train max | Train > own ↓ | s/slice | Peak mem (MiB) |"
    )
    assert lines[2] == "| Zero-filled (RSS) | 20.12 | — | — | — | — | — |"
    assert lines[3] == "| perfect | **inf** | 0.850 | 0.970 | 5/6 | 0.250 | 812 |"
    report = markdown_report([table])
    assert "closest training target (Corr train max: 12 slices of 2 files in train (64x64))" in report
    assert "The targets themselves correlate 0.812 on average with their closest training slice" in report
    rows = list(csv.DictReader(io.StringIO(csv_text([table]))))
    assert rows[1]["corr_own"] == "0.85" and rows[1]["train_closer_slices"] == "5"
    assert rows[1]["correlated_slices"] == "6" and rows[0]["corr_own"] == ""
    document = json_document([table], {})
    assert document["families"]["cartesian_y"]["rows"][1]["memorisation"] == summary
    assert document["families"]["cartesian_y"]["training"] == table.training
