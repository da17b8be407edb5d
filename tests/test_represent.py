"""ifl.represent: CKA against Kornblith et al.'s published numbers and its invariances (reference
§2.3), token-state extraction from a tiny random LLaVA (float32, CPU) checked against the
model's own hidden states, and a seeded UMAP that repeats exactly."""
import doctest

import numpy as np
import pytest
import torch

import ifl.represent
from ifl.compat import image_features
from ifl.data.miniature import make_tasks
from ifl.models import load_llava
from ifl.represent import cka, cka_matrix, extract, umap_embed
from ifl.smoke.tiny_llava import N_IMAGE_TOKENS, write_tiny_llava_models

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def xy():
    np.random.seed(1337)  # the legacy stream of Kornblith's demo notebook
    X = np.random.randn(100, 10)
    Y = np.random.randn(100, 10) + X
    return X, Y


def test_doctests():
    assert doctest.testmod(ifl.represent).failed == 0


def test_published_values(xy):
    X, Y = xy
    assert cka(X, Y) == pytest.approx(0.55761, abs=5e-6)
    assert cka(X, Y, kernel="rbf", threshold=0.5) == pytest.approx(0.65483, abs=5e-6)
    assert cka(X, Y, debiased=True) == pytest.approx(0.51346, abs=5e-6)
    # the feature-space formula of linear CKA, after centring the columns
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    feature_space = (np.linalg.norm(Yc.T @ Xc) ** 2
                     / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc)))
    assert cka(X, Y) == pytest.approx(feature_space, abs=1e-12)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cka_is_invariant_to_rotation_scale_translation_and_order_but_not_linear_maps(xy, kernel):
    X, Y = xy
    base = cka(X, Y, kernel=kernel)
    Q, _ = np.linalg.qr(np.random.RandomState(0).randn(10, 10))
    assert cka(X @ Q, Y, kernel=kernel) == pytest.approx(base, abs=1e-10)       # orthogonal
    assert cka(3.7 * X, Y, kernel=kernel) == pytest.approx(base, abs=1e-10)     # isotropic scale
    assert cka(X + 5.0, Y, kernel=kernel) == pytest.approx(base, abs=1e-10)     # translation
    assert cka(Y, X, kernel=kernel) == pytest.approx(base, abs=1e-12)           # symmetry
    A = np.random.RandomState(1).randn(10, 10)                                   # general linear map
    assert abs(cka(X @ A, Y, kernel=kernel) - base) > 1e-3


def test_identity_widths_and_range(xy):
    X, Y = xy
    wide = np.random.RandomState(2).randn(100, 37)
    for kw in [{}, {"debiased": True}, {"kernel": "rbf"}, {"kernel": "rbf", "debiased": True}]:
        assert cka(X, X, **kw) == pytest.approx(1.0, abs=1e-12)
    assert 0 <= cka(X, wide) <= 1
    with pytest.raises(ValueError, match="same examples"):
        cka(X, Y[:50])


def test_rbf_tends_to_linear_at_large_bandwidth(xy):
    X, Y = xy
    assert cka(X, Y, kernel="rbf", threshold=10) == pytest.approx(0.557828, abs=5e-6)
    assert cka(X, Y, kernel="rbf", threshold=100) == pytest.approx(0.557615, abs=5e-6)
    assert abs(cka(X, Y, kernel="rbf", threshold=1000) - cka(X, Y)) < 1e-5


def test_debiased_is_near_zero_for_independent_data_when_n_is_much_smaller_than_d():
    rng = np.random.RandomState(0)
    X, Y = rng.randn(50, 4096), rng.randn(50, 4096)
    assert cka(X, Y) > 0.95                     # the biased estimator's artefact
    assert abs(cka(X, Y, debiased=True)) < 0.1


def test_cka_matrix(xy):
    X, Y = xy
    reps = [X, Y, X @ np.random.RandomState(3).randn(10, 20)]
    m = cka_matrix(reps, reps)
    assert m.shape == (3, 3)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-12)
    np.testing.assert_allclose(m, m.T, atol=1e-12)
    assert m[0, 1] == pytest.approx(cka(X, Y), abs=1e-12)
    rbf = cka_matrix(reps[:2], reps[1:], kernel="rbf", debiased=True)
    assert rbf[0, 0] == pytest.approx(cka(X, Y, kernel="rbf", debiased=True), abs=1e-12)


# ---------------------------------------------------------------- extraction on a tiny LLaVA


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    paths = write_tiny_llava_models(tmp_path_factory.mktemp("smoke"))
    return load_llava(paths["tiny-llava-1.5"], dtype="float32")


@pytest.fixture(scope="module")
def tasks():
    return make_tasks(3, ["en", "zh"], seed=0, benchmarks=["shapes_vqa"])  # 3 images, 6 questions


def test_extract_matches_the_models_own_states(tiny, tasks):
    model, processor = tiny
    reps = extract(model, processor, tasks, template="llava_hf", image_tokens=5, batch_size=4)
    meta = reps.meta
    assert reps.indices == [0, 1, 2] and set(meta.columns) >= {"task_id", "lang", "kind", "position"}
    image, text = meta[meta.kind == "image"], meta[meta.kind == "text"]
    assert len(image) == 3 * 5 and image.position.max() < N_IMAGE_TOKENS  # each image once
    assert all(s.dtype == np.float32 and s.shape[0] == len(meta) for s in reps.states.values())

    # index 0 at image tokens = the projector's output; at text tokens = embedding-table rows
    from ifl.collect.engine import decode_image
    first = tasks.iloc[0]
    pixels = processor(text=["<image>"], images=[decode_image(first.image)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        projected = image_features(model, pixels)[0]
    rows = image.index[image.task_id == first.task_id]
    np.testing.assert_allclose(reps.states[0][rows], projected[image.position[rows].tolist()].numpy(), atol=1e-5)
    tok = processor.tokenizer
    ids = tok(first.question)["input_ids"][1:]  # BOS left out
    rows = text.index[text.task_id == first.task_id]
    assert len(rows) == len(ids)
    np.testing.assert_allclose(reps.states[0][rows], model.get_input_embeddings().weight[ids].detach().numpy())

    # index 1 (output of decoder layer 0) = hidden_states[1], in a forward of the same prompt
    from ifl.prompts import query, template
    enc = processor(text=[query(template("llava_hf"), first.question, image=True)],
                    images=[decode_image(first.image)], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states[1][0]
    columns = torch.nonzero(enc["input_ids"][0] == model.config.image_token_id).flatten()
    rows = image.index[image.task_id == first.task_id]
    np.testing.assert_allclose(reps.states[1][rows], hidden[columns[image.position[rows].tolist()]].numpy(),
                               atol=1e-5)


def test_extract_is_the_same_in_any_batch_and_repeats(tiny, tasks):
    model, processor = tiny
    kw = dict(template="llava_hf", indices=[0, 2], image_tokens=4, text_tokens=3, seed=7)
    one = extract(model, processor, tasks, batch_size=1, **kw)
    many = extract(model, processor, tasks, batch_size=4, **kw)  # left-padded batches
    assert one.meta.equals(many.meta)
    for i in (0, 2):
        np.testing.assert_allclose(one.states[i], many.states[i], atol=1e-5)
    other_seed = extract(model, processor, tasks, batch_size=4, **{**kw, "seed": 8})
    assert not one.meta.position.equals(other_seed.meta.position)


@pytest.mark.slow  # ~15 s: numba compiles umap-learn's parallel kernels once per process
def test_umap_is_deterministic_given_a_seed():
    X = np.random.RandomState(0).randn(60, 16)
    a, b = umap_embed(X, seed=0, n_neighbors=10), umap_embed(X, seed=0, n_neighbors=10)
    assert a.shape == (60, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_cka_results_need_the_same_examples_and_square_layout():
    """Notebook 06's table: both models' rows must be the same (task, position) examples; the
    figure puts linear CKA on and below the diagonal, RBF above."""
    import pandas as pd

    from ifl.stages.umap_cka import cka_results, cka_square
    from ifl.represent import Representations

    rng = np.random.RandomState(0)
    meta = pd.DataFrame({"task_id": ["t"] * 30, "position": range(30)})
    X = {i: rng.randn(30, 8).astype(np.float32) for i in range(3)}
    a = Representations(meta, X)
    b = Representations(meta, {i: x @ rng.randn(8, 8).astype(np.float32) for i, x in X.items()})
    res = cka_results(a, b, threshold=0.5, seed=0)
    square = cka_square(res, debiased=False)
    main = res[res["control"].isna() & ~res["debiased"]]
    lin = main[main.kernel == "linear"].set_index(["site_a", "site_b"])["cka"]
    rbf = main[main.kernel == "rbf"].set_index(["site_a", "site_b"])["cka"]
    assert square[2, 0] == lin[(2, 0)] and square[1, 1] == lin[(1, 1)] and square[0, 2] == rbf[(0, 2)]
    assert square[0, 0] == pytest.approx(cka(X[0], b.states[0]))
    shuffled = Representations(meta.sample(frac=1, random_state=0).reset_index(drop=True), b.states)
    with pytest.raises(ValueError, match="same examples"):
        cka_results(a, shuffled, threshold=0.5, seed=0)
