"""Corpus lookup, text rules, sorted vocabularies and batching."""

import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from jrnn import data


def test_vocab_is_sorted_and_round_trips():
    v = data.build_vocab("hello world")
    assert v.chars == tuple(sorted(set("hello world")))
    ids = v.encode("world hello")
    assert ids.dtype == np.int32 and v.decode(ids) == "world hello"


def test_unknown_characters_raise():
    with pytest.raises(ValueError, match="not in the vocabulary"):
        data.build_vocab("abc").encode("abd")


def test_vocab_does_not_depend_on_hash_seed():
    code = "from jrnn import data; print(data.build_vocab('the quick brown fox jumps').chars)"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": s}).stdout for s in ("0", "1", "12345")}
    assert len(outs) == 1


@pytest.mark.parametrize("raw,match", [(b"", "0 characters"), (b"a", "1 characters"),
                                       (b"ab\xff\xfe", "not valid UTF-8"), (b"ab\x00c", "NUL")])
def test_bad_corpora_raise(raw, match):
    with pytest.raises(ValueError, match=match):
        data.decode_text(raw)


def test_bom_is_dropped_and_crlf_kept():
    assert data.decode_text(b"\xef\xbb\xbfab\r\ncd") == "ab\r\ncd"


def test_corpus_found_via_env_var(data_dir):
    p = data.corpus_path("kafka")
    assert p == data.corpus_path("kafka", os.path.join(data_dir, "kafka.txt"))
    text = data.load_text("kafka")
    assert len(text) == 137628 and data.build_vocab(text).size == 80


@pytest.mark.parametrize("offline_var", ["0", "1"])
def test_offline_missing_corpus_names_env_var_and_url(tmp_path, monkeypatch, offline_var):
    monkeypatch.setenv("JRNN_OFFLINE", offline_var)
    monkeypatch.setenv("JRNN_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(*a, **k):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(data.CorpusNotFoundError) as e:
        data.corpus_path("tinyshakespeare")
    assert "JRNN_DATA_DIR" in str(e.value) and data.CORPORA["tinyshakespeare"][0] in str(e.value)
    assert not (tmp_path / "cache" / "jrnn" / "tinyshakespeare.txt").exists()


def test_missing_corpus_error_names_every_path_it_tried(tmp_path, monkeypatch):
    """JRNN_DATA_DIR set to a folder without the corpus: the error names that file (absolute) and
    the cache file, says what to do, and nothing is written."""
    monkeypatch.setenv("JRNN_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JRNN_DATA_DIR", "no_corpus_here")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(data.CorpusNotFoundError) as e:
        data.corpus_path("kafka")
    msg = str(e.value)
    assert str(tmp_path / "no_corpus_here" / "kafka.txt") in msg
    assert str(tmp_path / "cache" / "jrnn" / "kafka.txt") in msg
    assert "--data" in msg and "unset it" in msg
    with pytest.raises(data.CorpusNotFoundError, match=str(tmp_path / "nope.txt")):
        data.corpus_path("kafka", "nope.txt")


def test_download_is_checked_against_sha256(tmp_path, monkeypatch):
    monkeypatch.delenv("JRNN_DATA_DIR", raising=False)
    monkeypatch.delenv("JRNN_OFFLINE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    class Fake:
        def __init__(self, payload):
            self.payload = payload

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self):
            return self.payload

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Fake(b"tampered"))
    with pytest.raises(ValueError, match="sha256"):
        data.corpus_path("kafka")
    assert not (tmp_path / "jrnn" / "kafka.txt").exists()


def test_unknown_corpus_and_missing_path_raise(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus"):
        data.corpus_path("wikipedia")
    with pytest.raises(data.CorpusNotFoundError):
        data.corpus_path("kafka", tmp_path / "nope.txt")


def test_chunks_are_shifted_by_one():
    ids = np.arange(53)
    x, y = data.chunks(ids, 25)
    assert x.shape == (2, 25) and np.array_equal(y, x + 1)
    with pytest.raises(ValueError, match="shorter than seq_len"):
        data.chunks(np.arange(25), 25)


def test_streams_keep_each_stream_contiguous():
    ids = np.arange(1001)
    x, y = data.streams(ids, 4, 10)
    assert x.shape == (25, 10, 4)
    np.testing.assert_array_equal(y, x + 1)
    stream0 = x[:, :, 0].reshape(-1)
    np.testing.assert_array_equal(np.diff(stream0), 1)  # chunks follow each other in stream 0


@pytest.mark.parametrize("batch,seq_len,err,match", [
    (0, 10, ValueError, "batch_size must be >= 1"), (-2, 10, ValueError, "batch_size must be >= 1"),
    (4, 0, ValueError, "seq_len must be >= 1"), (2.5, 10, TypeError, "batch_size must be an integer"),
    (True, 10, TypeError, "batch_size must be an integer"), (4, 2.0, TypeError, "seq_len must be an integer")])
def test_streams_refuse_bad_counts_with_a_named_error(batch, seq_len, err, match):
    with pytest.raises(err, match=match):
        data.streams(np.arange(100), batch, seq_len)


def test_batching_helpers_refuse_bad_arguments_and_accept_numpy_integers():
    x, _ = data.streams(np.arange(101), np.int64(4), np.int32(5))
    assert x.shape == (5, 5, 4)
    assert data.chunks(np.arange(11), np.int64(5))[0].shape == (2, 5)
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        data.chunks(np.arange(11), 0)
    with pytest.raises(ValueError, match="1-D"):
        data.streams(np.zeros((10, 10), np.int32), 2, 2)
    with pytest.raises(ValueError, match="bucket must be >= 1"):
        data.pad([[1, 2]], bucket=0, time_major=False)
    with pytest.raises(TypeError, match="length must be an integer"):
        data.pad([[1, 2]], length=2.5, time_major=False)
    assert data.bucket_length(np.int64(33), 32) == 64


def test_cached_corpus_with_a_wrong_checksum_says_so_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("JRNN_DATA_DIR", raising=False)
    monkeypatch.setenv("JRNN_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = tmp_path / "jrnn" / "kafka.txt"
    cached.parent.mkdir()
    cached.write_text("not kafka")
    with pytest.raises(ValueError) as e:
        data.corpus_path("kafka")
    msg = str(e.value)
    assert "checksum" in msg and str(cached) in msg and "delete it" in msg and "not found" not in msg
    assert cached.read_text() == "not kafka"   # the user's file is reported, not removed


def test_cached_corpus_with_a_wrong_checksum_is_replaced_online(tmp_path, monkeypatch):
    monkeypatch.delenv("JRNN_DATA_DIR", raising=False)
    monkeypatch.delenv("JRNN_OFFLINE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = tmp_path / "jrnn" / "kafka.txt"
    cached.parent.mkdir()
    cached.write_text("not kafka")
    good = b"good text"
    monkeypatch.setitem(data.CORPORA, "kafka", ("https://example.invalid/kafka.txt",
                                                __import__("hashlib").sha256(good).hexdigest()))

    class Fake:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self):
            return good

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Fake())
    assert data.corpus_path("kafka") == cached and cached.read_bytes() == good


@pytest.mark.parametrize("ids, err", [([-1], ValueError), ([3], ValueError), ([0.7], TypeError),
                                      (np.array([1, 99]), ValueError)])
def test_decode_refuses_ids_outside_the_vocabulary(ids, err):
    # -1 decoded as the last character, 0.7 as the first
    with pytest.raises(err, match="ids must"):
        data.build_vocab("abc").decode(ids)


def test_decode_of_numpy_and_jax_ids_round_trips():
    import jax.numpy as jnp
    v = data.build_vocab("hello")
    assert v.decode(jnp.asarray(v.encode("hole"))) == "hole" == v.decode(v.encode("hole").astype(np.int64))
    assert v.decode([]) == ""


@pytest.mark.parametrize("ids, err", [(list("hello world"), TypeError), (np.linspace(0, 1, 11), TypeError),
                                      (np.array([-1, 2, 3, 4, 5, 6, 7, 8, 9]), ValueError)])
def test_streams_and_chunks_refuse_what_is_not_token_ids(ids, err):
    # a list of characters came back as '<U1' batches, floats as float batches, -1 as a token
    with pytest.raises(err, match="ids must"):
        data.streams(ids, 2, 2)
    with pytest.raises(err, match="ids must"):
        data.chunks(ids, 2)


@pytest.mark.parametrize("seqs, kw, err", [
    ([np.array([0.7, 1.5])], {}, TypeError),                 # was truncated to [0, 1]
    ([np.array([2 ** 40])], {}, ValueError),                 # was wrapped to 0
    ([np.array([-1, 2])], {}, ValueError),
    ([[1, 2], [1]], {"pad_id": -1}, ValueError),
    ([[1, 2], [1]], {"pad_id": 1.5}, TypeError),             # was truncated to 1
    ([[1, 2], [1]], {"pad_id": True}, TypeError),
])
def test_pad_refuses_ids_it_would_change(seqs, kw, err):
    with pytest.raises(err):
        data.pad(seqs, **kw, time_major=False)


def test_pad_accepts_numpy_integer_ids_and_pad_id():
    ids, mask = data.pad([np.array([3, 4], np.int64), [5]], pad_id=np.int32(7), time_major=False)
    assert ids.tolist() == [[3, 4], [5, 7]] and mask.tolist() == [[True, True], [True, False]]


def test_text_where_token_ids_are_expected_is_a_named_type_error():
    """A str read as a 0-d array ("got shape ()") or as one sequence per character; bytes
    made a vocabulary of integers; decode_text of a str failed inside `in`."""
    with pytest.raises(TypeError, match="got text"):
        data.chunks("abcdef", 2)
    with pytest.raises(TypeError, match="got text"):
        data.streams("abcdef", 1, 2)
    with pytest.raises(TypeError, match="sequence 1 is text"):
        data.pad([[1, 2], "ab"], time_major=False)
    with pytest.raises(TypeError, match="got text"):
        data.pad("abc", time_major=False)
    with pytest.raises(TypeError, match="decode bytes with jrnn.data.decode_text"):
        data.build_vocab(b"abc")
    with pytest.raises(ValueError, match="empty text"):
        data.build_vocab("")
    with pytest.raises(TypeError, match="raw bytes"):
        data.decode_text("ab")
    ids, mask = data.pad(iter([[1, 2], np.array([3])]), time_major=False)   # any iterable, ragged
    np.testing.assert_array_equal(ids, [[1, 2], [3, 0]])
    np.testing.assert_array_equal(mask, [[True, True], [True, False]])
