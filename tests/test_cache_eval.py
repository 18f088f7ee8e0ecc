"""``python -m llmedge cache-eval``: reading pairs, the numbers, the command line."""

from __future__ import annotations

import json

import pytest

from llmedge import HashingEmbedder, guard_check
from llmedge.__main__ import main as cli_main
from llmedge.cache_eval import Pair, embedder_from_spec, evaluate, read_pairs

PAIRS = [
    ("How do I reset my password?", "How do I reset my password", True),
    ("How do I reset my password?", "how can I reset my password?", True),
    ("What is the capital of France?", "What is the capital of Spain?", False),
    ("Is it safe to take 2 pills?", "Is it safe to take 3 pills?", False),
    ("Is coffee bad for you?", "Is coffee not bad for you?", False),
    ("Best laptop for students", "Which laptop is best for students?", True),
]


def write_csv(path, rows, header=True):
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if header:
            w.writerow(["prompt_a", "prompt_b", "same_answer"])
        for a, b, same in rows:
            w.writerow([a, b, int(same)])
    return path


def test_read_pairs_with_and_without_header(tmp_path):
    with_header = read_pairs(write_csv(tmp_path / "a.csv", PAIRS))
    assert with_header == [Pair(a, b, s) for a, b, s in PAIRS]
    # headerless: the last three columns (id,a,b,label files such as mqp.csv)
    path = tmp_path / "b.csv"
    path.write_text('7,"x, y",z,1\n8,u,v,no\n', encoding="utf-8")
    assert read_pairs(path) == [Pair("x, y", "z", True), Pair("u", "v", False)]
    # named columns in any order
    path.write_text("same_answer,prompt_b,prompt_a\ntrue,b,a\n", encoding="utf-8")
    assert read_pairs(path) == [Pair("a", "b", True)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no pairs"),
        ("prompt_a,prompt_b,same_answer\n", "header and no pairs"),
        ("a,b,maybe\n", "line 1: same_answer must be one of .*got 'maybe'"),
        ("prompt_a,prompt_b,same_answer\na,b,1\nc,d\n", "line 3: expected 3 columns, got 2"),
        # an unquoted comma in a prompt is named, not read as another column
        ("How are you, today?,How are you?,1,x\n", "line 1: .* got 5 columns; quote prompts"),
        ("a,b\n", "line 1: .* got 2 columns"),
        ("x,,1\n", "line 1: a prompt is empty"),
        ("prompt_a,prompt_b,same_answer\n  ,b,1\n", "line 2: a prompt is empty"),
    ],
)
def test_read_pairs_bad_files(tmp_path, content, message):
    path = tmp_path / "p.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_pairs(path)


def test_read_pairs_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("prompt_a,prompt_b,same_answer\na,b,yes\n".encode("utf-8-sig"))
    assert read_pairs(path) == [Pair("a", "b", True)]


def test_read_pairs_missing_and_binary(tmp_path):
    with pytest.raises(ValueError, match="cannot read the pairs file"):
        read_pairs(tmp_path / "absent.csv")
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00a,b,1\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_pairs(path)


def test_numbers_match_a_direct_count():
    pairs = [Pair(a, b, s) for a, b, s in PAIRS]
    sims = [0.99, 0.9, 0.95, 0.97, 0.96, 0.7]
    report = evaluate(pairs, similarities=sims, thresholds=[0.8, 0.92], target_precision=0.6)
    rows = {r.threshold: r for r in report.rows}
    # at 0.8 five pairs hit, two of them labelled same; the guard rejects the
    # number and the negation pairs (and the entity one)
    reasons = [guard_check(p.prompt_a, p.prompt_b) for p in pairs]
    assert reasons[3] == "numbers" and reasons[4] == "negation" and reasons[0] is None
    r = rows[0.8]
    assert (r.hits, r.precision, r.recall) == (5, 2 / 5, 2 / 3)
    accepted = [s >= 0.8 and reason is None for s, reason in zip(sims, reasons, strict=True)]
    tp = sum(a and p.same_answer for a, p in zip(accepted, pairs, strict=True))
    assert r.guard_hits == sum(accepted)
    assert r.guard_precision == tp / sum(accepted)
    assert r.guard_recall == tp / 3
    assert rows[0.92].hits == 4
    # the rejection list counts pairs at or above `rejections_at` only
    assert set(report.rejections) >= {"numbers", "negation"}
    assert report.rejections["numbers"]["wrong"] == 0
    assert report.rejections["numbers"]["examples"][0]["prompt_a"] == PAIRS[3][0]
    # the lowest threshold of the grid that reaches the target precision
    assert report.target["guard"] is not None
    assert report.target["guard"]["precision"] >= 0.6
    text = report.format()
    assert "| 0.80 | 5 | 40.0% | 66.7% |" in text and "numbers:" in text


def test_the_guard_effect_at_the_rejection_threshold():
    pairs = [
        Pair("How do I add a photo?", "How do I upload a photo?", True),
        Pair("Take 5 mg daily", "Take 5 g daily", False),
        Pair("Is it safe to fly?", "Is it not safe to fly?", False),
        Pair("Tell me about cats", "Tell me something about cats", True),
        Pair("Reset my password", "How do I reset my password", True),
    ]
    sims = [0.87, 0.97, 0.96, 0.91, 0.86]
    report = evaluate(pairs, similarities=sims, thresholds=[0.85])
    e = report.effect
    # the guard is given each pair's cosine: add/upload at 0.87 is below the
    # level that vouches for a near-synonym, so it is rejected
    assert guard_check(pairs[0].prompt_a, pairs[0].prompt_b, 0.87) == "substitution"
    assert (e.threshold, e.recall, e.guard_recall) == (0.85, 1.0, 2 / 3)
    assert e.recall_cost == pytest.approx(100 / 3)
    assert e.guard_precision == 1.0
    # the plain threshold with recall 2/3 at the highest threshold: the second
    # most similar positive, 0.87, where 4 pairs hit and 2 are positives
    assert e.plain_threshold == 0.87 and e.plain_precision == 0.5
    assert e.precision_gain == pytest.approx(50.0)
    text = report.format()
    assert "a cost of 33.3 points" in text and "(+50.0 points)" in text


def test_embedding_path_and_identical_pairs():
    pairs = [Pair("same text here", "same text here", True), Pair("alpha beta", "gamma", False)]
    report = evaluate(pairs, embed=HashingEmbedder(64), thresholds=[0.99])
    assert report.rows[0].hits == 1 and report.rows[0].precision == 1.0


def test_evaluate_rejects_bad_arguments():
    pairs = [Pair("a", "b", True)]
    with pytest.raises(ValueError, match="at least one pair"):
        evaluate([])
    with pytest.raises(ValueError, match="target_precision must be in"):
        evaluate(pairs, similarities=[0.5], target_precision=0)
    with pytest.raises(ValueError, match="thresholds must be numbers in"):
        evaluate(pairs, similarities=[0.5], thresholds=[2.0])
    with pytest.raises(ValueError, match="1 similarities for 2 pairs"):
        evaluate(pairs * 2, similarities=[0.5])
    with pytest.raises(ValueError, match="--embedder must be .*openai:MODEL"):
        embedder_from_spec("word2vec")
    with pytest.raises(ValueError, match="integer dimension"):
        embedder_from_spec("hashing:big")


def test_command_line(tmp_path, capsys):
    csv_path = write_csv(tmp_path / "pairs.csv", PAIRS)
    out_json = tmp_path / "r.json"
    argv = ["cache-eval", "--pairs", str(csv_path), "--thresholds", "0.3,0.6", "--json"]
    assert cli_main([*argv, str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "6 pairs, 3 labelled same answer" in out and "| 0.30 |" in out
    data = json.loads(out_json.read_text())
    assert data["pairs"] == 6 and [r["threshold"] for r in data["rows"]] == [0.3, 0.6]
    # bad input: a message on stderr and exit status 2, no traceback
    assert cli_main(["cache-eval", "--pairs", str(tmp_path / "nope.csv")]) == 2
    assert "cannot read the pairs file" in capsys.readouterr().err
    assert cli_main(["cache-eval", "--pairs", str(csv_path), "--thresholds", "x"]) == 2
    assert "--thresholds must be" in capsys.readouterr().err
    assert cli_main(["cache-eval", "--pairs", str(csv_path), "--vectors", "v.npy"]) == 2
    assert "--vectors and --texts go together" in capsys.readouterr().err
    assert cli_main(["cache-eval", "--pairs", str(csv_path), "--embedder", "openai:m"]) == 2
    assert "needs --embedder-url" in capsys.readouterr().err
    # an output that cannot be written: the report is printed first
    assert cli_main([*argv, str(tmp_path / "no" / "dir" / "r.json")]) == 2
    captured = capsys.readouterr()
    assert "6 pairs" in captured.out and "No such file" in captured.err


def test_precomputed_vectors(tmp_path, capsys):
    np = pytest.importorskip("numpy")
    csv_path = write_csv(tmp_path / "pairs.csv", PAIRS)
    texts = sorted({t for a, b, _ in PAIRS for t in (a, b)})
    vectors = np.asarray(HashingEmbedder(32)(texts), dtype=np.float32)
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "t.json").write_text(json.dumps(texts))
    argv = ["cache-eval", "--pairs", str(csv_path), "--vectors", str(tmp_path / "v.npy")]
    assert cli_main([*argv, "--texts", str(tmp_path / "t.json")]) == 0
    direct = evaluate(read_pairs(csv_path), embed=HashingEmbedder(32))
    assert direct.format() in capsys.readouterr().out
    # a text without a vector is named
    (tmp_path / "t.json").write_text(json.dumps(texts[:-1]))
    np.save(tmp_path / "v.npy", vectors[:-1])
    assert cli_main([*argv, "--texts", str(tmp_path / "t.json")]) == 2
    assert "has no vector for" in capsys.readouterr().err
    (tmp_path / "t.json").write_text("[1,")
    assert cli_main([*argv, "--texts", str(tmp_path / "t.json")]) == 2
    assert "t.json' is not JSON" in capsys.readouterr().err
    assert cli_main([*argv[:-1], str(tmp_path / "nope.npy"), "--texts", "t.json"]) == 2
    assert "cannot read --texts" in capsys.readouterr().err


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    csv_path = write_csv(tmp_path / "pairs.csv", PAIRS)
    png = tmp_path / "pr.png"
    assert cli_main(["cache-eval", "--pairs", str(csv_path), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_docs_example_runs():
    import re

    from docs_text import docs_text

    text = docs_text()
    start = text.index("### On your own data: `python -m llmedge cache-eval`")
    section = text[start : text.index("\n### ", start + 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    exec(blocks[0], {})


def test_openai_compatible_embedder(tmp_path, capsys, mock_llm):
    # the gateway's embedder spec works here too (the mock serves /v1/embeddings)
    csv_path = write_csv(tmp_path / "pairs.csv", PAIRS)
    argv = ["cache-eval", "--pairs", str(csv_path), "--embedder", "openai:text-embedding-3-small"]
    assert cli_main([*argv, "--embedder-url", mock_llm.base_url]) == 0
    assert "6 pairs, 3 labelled same answer" in capsys.readouterr().out
    assert mock_llm.stats()["embedding_requests"] >= 1
