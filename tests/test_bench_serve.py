"""`manet bench serve`: the load driver, the metrics reader and the tie-aware comparison (pure),
and the command end to end on a tiny model against real loopback servers and the embedded
database. Speed is measured by the benchmark, never asserted here."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner

from manet.bench.serve import MODES, format_report
from manet.bench.serve_load import Answer, LevelRun, agreement, agrees, level_figures, run_level, search_form
from manet.bench.serve_metrics import FORWARD_METRIC, batch_figures, parse_histogram
from manet.cli.main import cli

METRICS = """# HELP manet_batch_size Queries per forward pass (micro-batching).
# TYPE manet_batch_size histogram
manet_batch_size_bucket{le="1.0"} 3.0
manet_batch_size_bucket{le="2.0"} 5.0
manet_batch_size_bucket{le="4.0"} 6.0
manet_batch_size_bucket{le="8.0"} 6.0
manet_batch_size_bucket{le="+Inf"} 6.0
manet_batch_size_count 6.0
manet_batch_size_sum 11.0
manet_forward_seconds_bucket{le="+Inf"} 6.0
manet_forward_seconds_count 6.0
manet_forward_seconds_sum 0.9
"""


# -- pure ------------------------------------------------------------------------------------
def test_batch_histogram_differences_give_a_level_s_batches():
    after = parse_histogram(METRICS)
    assert (after.count, after.total, after.buckets[2.0]) == (6, 11, 5)
    before = parse_histogram(METRICS.replace("_count 6.0", "_count 2.0").replace("_sum 11.0", "_sum 2.0")
                             .replace('"1.0"} 3.0', '"1.0"} 2.0').replace('"2.0"} 5.0', '"2.0"} 2.0')
                             .replace('"4.0"} 6.0', '"4.0"} 2.0').replace('"8.0"} 6.0', '"8.0"} 2.0')
                             .replace('"+Inf"} 6.0', '"+Inf"} 2.0'))
    level = after - before
    # 4 batches of 9 images: one of 1, two of 2, one of 3 or 4.
    assert (level.count, level.total, level.mean, level.over_one, level.largest_bound) == (4, 9, 2.25, 3, 4.0)
    assert parse_histogram("").mean is None and parse_histogram("").largest_bound is None
    forward = parse_histogram(METRICS, FORWARD_METRIC)
    assert (forward.count, forward.total) == (6, 0.9)
    figures = batch_figures({"manet_batch_size": level, FORWARD_METRIC: forward}, seconds=1.8)
    # 0.9 s of forward passes for the 9 images of the interval, half of its 1.8 s.
    assert figures == {"batches": 4, "batches_over_one": 3, "mean_batch": 2.25, "max_batch_at_most": 4.0,
                       "forward_ms_per_image": 100.0, "model_busy": 0.5}


def test_answers_agree_up_to_ties():
    reference = Answer((1, 2, 3), (0.9, 0.5, 0.5))
    assert agrees(Answer((1, 2, 3), (0.9, 0.5, 0.5)), reference)
    assert agrees(Answer((1, 3, 2), (0.9, 0.50001, 0.5)), reference)  # 2 and 3 tie: either order
    assert not agrees(Answer((2, 1, 3), (0.9, 0.5, 0.5)), reference)  # rank 1 is not a tie
    assert not agrees(Answer((1, 2, 3), (0.9, 0.6, 0.5)), reference)
    assert not agrees(Answer((1, 2), (0.9, 0.5)), reference)


def test_search_form_is_multipart_with_the_photo_last():
    body, content_type = search_form(b"\xff\xd8\xffJPEG", "p.jpg", {"k": "7"})
    boundary = content_type.split("boundary=")[1]
    assert content_type.startswith("multipart/form-data; ")
    assert body.startswith(f"--{boundary}\r\n".encode()) and body.endswith(f"--{boundary}--\r\n".encode())
    assert b'name="k"\r\n\r\n7\r\n' in body and b'name="image"; filename="p.jpg"' in body
    assert b"\r\n\r\n\xff\xd8\xffJPEG\r\n" in body


class _FakeClient:
    """Answers with the photo number; fails on photo 4 (never a warm-up photo of 4 clients);
    records the threads that used it."""

    seen: set[str] = set()

    def search(self, photo: int) -> Answer:
        _FakeClient.seen.add(threading.current_thread().name)
        if photo == 4:
            raise RuntimeError("photo 4 is refused")
        return Answer((photo,), (1.0,))

    def close(self) -> None:
        pass


def test_run_level_sends_exactly_the_requests_from_every_client():
    _FakeClient.seen = set()
    run = run_level(_FakeClient, clients=4, requests=20, photos=5, warmup=1)
    figures = level_figures([run])
    # 20 timed requests over photos 0..4: photo 4 four times, refused and counted, not retried.
    assert (figures["requests"], figures["failed"], len(run.answers)) == (20, 4, 16)
    assert figures["first_error"] == "RuntimeError: photo 4 is refused"
    assert sorted(photo for photo, _ in run.answers) == sorted([0, 1, 2, 3] * 4)
    assert len(_FakeClient.seen) == 4 and figures["requests_per_s"] > 0 and figures["p99_ms"] >= figures["p50_ms"]
    references = [Answer((i,), (1.0,)) for i in range(5)]
    assert agreement([run], references) == 1.0
    assert agreement([LevelRun(1)], references) is None


def test_requests_per_second_count_in_the_steady_state():
    # 2 clients from t=0: both have had an answer at t=2; the last request is sent at t=5, when the
    # answers at 3, 4 and 5 are in: 3 answers in 3 s. The drain after it (one client left) is not counted.
    spans = [(0.0, 1.0), (0.0, 2.0), (1.0, 3.0), (2.0, 4.0), (3.0, 5.0), (4.0, 6.0), (5.0, 7.0)]
    run = LevelRun(2, seconds=7.0, started=0.0, spans=spans)
    assert run.steady() == (3, 3.0)
    two_rounds = level_figures([run, LevelRun(2, seconds=2.0, spans=[(0.0, 1.0), (0.0, 2.0)])])
    # The second round is as many requests as clients: its whole wall time counts.
    assert two_rounds["requests_per_s"] == round(5 / 5.0, 2) and two_rounds["wall_requests_per_s"] == 1.0
    assert two_rounds["requests"] == 9 and two_rounds["p50_ms"] == 2000.0


def test_run_level_reports_a_client_that_cannot_start():
    def broken() -> _FakeClient:
        raise ConnectionRefusedError("nobody listens")

    with pytest.raises(RuntimeError, match="could not start: nobody listens"):
        run_level(broken, clients=3, requests=6, photos=2)


# -- the command --------------------------------------------------------------------------------
def test_bench_serve_json(database_url, monkeypatch):
    """Every request answered, every answer the one-at-a-time Retriever.search's, and the
    batched server ran batches of several photos under 4 concurrent clients."""
    monkeypatch.delenv("MANET_DEVICE", raising=False)
    result = CliRunner().invoke(cli, [
        "--quiet", "--database-url", database_url, "--precision", "fp32", "bench", "serve",
        "--backbone", "resnet18", "--image-size", "64", "--images", "10", "--photos", "4", "--photo-size", "96",
        "--clients", "1,4", "--requests", "8", "--rounds", "2", "--max-batch", "4",
        # A long window: the 4 clients' simultaneous warm-up requests share a batch, however busy the machine.
        "--batch-wait-ms", "200", "--device", "cpu", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["device"], report["backbone"], report["weights"], report["clients"]) == \
        ("cpu", "resnet18", "none", [1, 4])
    assert (report["requests"], report["max_batch"], report["batch_wait_ms"], report["failed"]) == (8, 4, 200, 0)
    assert report["agreement"] == 1.0 and report["max_clients"] == 4
    for row in report["levels"]:
        assert len(row["orders"]) == 2 and all(sorted(order) == sorted(MODES) for order in row["orders"])
        for mode in MODES:
            figures = row[mode]
            assert (figures["requests"], figures["failed"], figures["agreement"]) == (8, 0, 1.0), (mode, figures)
            assert figures["p50_ms"] > 0 and figures["requests_per_s"] > 0
        assert row["unbatched"]["mean_batch"] == 1.0 and row["unbatched"]["batches_over_one"] == 0
        # 8 timed + 1 warm-up request per client and round, all in the server's batches.
        assert row["batched"]["mean_batch"] * row["batched"]["batches"] == 8 + 2 * row["clients"]
        assert row["batched_over_unbatched"] > 0
        for mode in ("batched", "unbatched"):
            assert row[mode]["forward_ms_per_image"] > 0 and 0 < row[mode]["model_busy"] <= 1.0
    busy = report["levels"][1]
    assert busy["clients"] == 4 and busy["batched"]["batches_over_one"] >= 1
    assert busy["batched"]["max_batch_at_most"] in (2.0, 4.0)
    assert report["batched_over_unbatched_at_max_clients"] == busy["batched_over_unbatched"]
    table = format_report(report)
    assert "batched / unbatched req/s: 1 clients" in table and "unbatched" in table

    reuse = CliRunner().invoke(cli, ["--quiet", "--database-url", database_url, "bench", "ingest", "--rows", "10",
                                     "--dim", "8", "--json"])
    assert reuse.exit_code == 0, reuse.output  # the scratch database was left empty


def test_bench_serve_rejects_fewer_requests_than_clients(tmp_path):
    result = CliRunner().invoke(cli, ["--quiet", "--home", str(tmp_path), "bench", "serve", "--clients", "1,8",
                                      "--requests", "20", "--rounds", "4"])
    assert result.exit_code == 1 and "in 4 rounds is fewer than the 8 clients" in result.output  # before any db work
