import hashlib

from cloc_mllm.eval.fingerprint import data_fingerprints, file_digest, files_digest, model_fingerprint


def test_file_digest_whole_and_edges(tmp_path):
    small = tmp_path / "a.json"
    small.write_bytes(b"{}")
    assert file_digest(small) == hashlib.sha256(b"{}").hexdigest()
    big = tmp_path / "w.safetensors"
    data = bytearray(3 << 20)
    big.write_bytes(bytes(data))
    edges = file_digest(big, whole=False)
    data[(3 << 20) // 2] = 1  # a change in the middle is not seen by the edge hash ...
    big.write_bytes(bytes(data))
    assert file_digest(big, whole=False) == edges
    data[-1] = 1  # ... a change at the end is
    big.write_bytes(bytes(data))
    assert file_digest(big, whole=False) != edges


def test_model_and_data_fingerprints_change_with_content(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "notes.txt").write_text("ignored")
    first = model_fingerprint(tmp_path)
    (tmp_path / "notes.txt").write_text("changed")
    assert model_fingerprint(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"weightz")
    assert model_fingerprint(tmp_path) != first
    prints = data_fingerprints([tmp_path / "config.json", tmp_path / "absent.json"])
    assert list(prints) == [str(tmp_path / "config.json")]
    one = files_digest([tmp_path / "config.json", tmp_path / "notes.txt"])
    assert one == files_digest([tmp_path / "notes.txt", tmp_path / "config.json"])  # order-free
    (tmp_path / "notes.txt").write_text("again")
    assert files_digest([tmp_path / "config.json", tmp_path / "notes.txt"]) != one
