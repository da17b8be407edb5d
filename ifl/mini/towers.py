"""Tiny vision towers: the miniature's CLIP (contrastive, English captions) and DINOv2
(self-supervised, no language). Only the vision model is saved, with its image processor, so a
tower loads like a hub encoder:

    path, metrics = train_clip_tower("runs/x/mini/clip", hidden=64, layers=3, steps=300, batch=128)
    CLIPVisionModel.from_pretrained(path), AutoImageProcessor.from_pretrained(path)
    path, metrics = train_dino_tower("runs/x/mini/dino", hidden=64, layers=3, steps=300, batch=128)
    AutoModel.from_pretrained(path)   # Dinov2Model

Shapes (image_size 32, patch 8): pixel_values [batch, 3, 32, 32] -> last_hidden_state
[batch, 17, hidden] (CLS + 16 patches); pooler_output [batch, hidden]. LLaVA's default
vision_feature_layer=-2 reads hidden_states[-2] == output of the second-to-last layer (layer 2
of 3 at the default size); the probes in the metrics read the same layer.
Images are scenes drawn straight into arrays (ifl.data.miniature.scenes), normalised exactly as
the saved processor does (tests compare), so training skips PNG and PIL.
"""
from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ifl.data.miniature import content
from ifl.data.miniature.render import render_turn
from ifl.data.miniature.scenes import BACKGROUND, SHAPES, render_array, sample_scene
from ifl.mini.common import fresh_dir, is_done, lr_at, mark_done
from ifl.progress import report as report_progress

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)   # DINOv2's
MAX_SHIFT = 3   # px of translation between DINO views: less than an object's radius (5-6 px)


def scenes(n: int, seed: int, tag: str, image_size: int = 32) -> list[dict]:
    """n scene graphs; scene i depends only on (tag, seed, i)."""
    return [sample_scene(random.Random(f"{tag}:{seed}:{i}"), f"{tag}-{i}", size=image_size)
            for i in range(n)]


def shape_twin(scene: dict, rng: random.Random) -> dict:
    """The same scene with other shapes: every object keeps its colour, place and size, the
    shapes are redrawn (distinct within the scene, at least one changed). A twin in the same
    batch is a hard negative: colour and place, which tell random scenes apart, no longer do.

    >>> s = sample_scene(random.Random(0), "s")
    >>> t = shape_twin(s, random.Random(0))
    >>> [(o["color"], o["x"]) for o in t["objects"]] == [(o["color"], o["x"]) for o in s["objects"]]
    True
    >>> [o["shape"] for o in t["objects"]] != [o["shape"] for o in s["objects"]]
    True
    """
    old = [o["shape"] for o in scene["objects"]]
    new = old
    while new == old:
        new = rng.sample(SHAPES, len(old))
    return {**scene, "id": f"{scene['id']}-twin",
            "objects": [{**o, "shape": sh} for o, sh in zip(scene["objects"], new)]}


def with_twins(chunk: list[dict], share: float, rng: random.Random) -> list[dict]:
    """`chunk` with its last `share` replaced by shape twins of its first scenes (same size)."""
    k = min(int(round(share * len(chunk))), len(chunk) // 2)
    return chunk[:len(chunk) - k] + [shape_twin(s, rng) for s in chunk[:k]] if k else chunk


def pixels(batch: list[dict], mean, std) -> torch.Tensor:
    """Scenes -> normalised pixel_values [n, 3, size, size], as the saved image processor gives."""
    arr = torch.from_numpy(np.stack([render_array(s) for s in batch])).float() / 255.0
    return ((arr - torch.tensor(mean)) / torch.tensor(std)).permute(0, 3, 1, 2).contiguous()


def image_processor(kind: str, image_size: int):
    """The processor saved beside a tower: resize shortest edge + centre crop to image_size (a
    no-op on the miniature's images, so no resampling surprises), rescale, normalise. The PIL
    backends need no torchvision; the saved type names the standard class, which any backend loads."""
    from transformers import BitImageProcessorPil, CLIPImageProcessorPil
    cls, mean, std = ((CLIPImageProcessorPil, CLIP_MEAN, CLIP_STD) if kind == "clip"
                      else (BitImageProcessorPil, IMAGENET_MEAN, IMAGENET_STD))
    return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
               do_resize=True, do_center_crop=True, do_rescale=True, do_normalize=True,
               do_convert_rgb=True, image_mean=list(mean), image_std=list(std))


def _vision_dims(hidden: int, layers: int) -> dict:
    return dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                num_attention_heads=max(1, hidden // 32))


# --- CLIP: contrastive against English captions --------------------------------------------------

def caption(scene: dict) -> str:
    """The English text a CLIP image is paired with: count, then colour, shape and position of
    each object (the miniature's description; every fact a question can ask about)."""
    return render_turn(content.description(scene), "en")


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


class CaptionEncoder(torch.nn.Module):
    """A tiny CLIPTextModel over English words (the text side is only a training signal and is
    not saved). ids [n, seq] -> pooled [n, hidden] at the end-of-text token."""

    def __init__(self, vocab: list[str], hidden: int, layers: int):
        from transformers import CLIPTextConfig, CLIPTextModel
        super().__init__()
        self.index = {w: i + 3 for i, w in enumerate(vocab)}   # 0 pad, 1 bos, 2 unk; eos last
        self.eos = len(vocab) + 3
        self.model = CLIPTextModel(CLIPTextConfig(
            vocab_size=self.eos + 1, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
            eos_token_id=self.eos, **_vision_dims(hidden, layers)))

    def forward(self, texts: list[str]) -> torch.Tensor:
        seqs = [[1] + [self.index.get(w, 2) for w in _words(t)] + [self.eos] for t in texts]
        ids = torch.zeros((len(seqs), max(map(len, seqs))), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, :len(seq)] = torch.tensor(seq)
        return self.model(input_ids=ids, attention_mask=(ids > 0).long()).pooler_output


class LMCaptionEncoder(torch.nn.Module):
    """English captions read through a miniature LM's own tokenizer and frozen input embeddings,
    then one transformer layer, mean-pooled: the tower's images align with English text as the
    LM itself represents it (real CLIP's text side and Vicuna share English, not weights; here the
    shared vocabulary stands for that). Not saved: only a training signal. texts -> [n, hidden]."""

    def __init__(self, lm_dir: str | Path, hidden: int, max_tokens: int = 128):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        super().__init__()
        self.tokenizer = AutoTokenizer.from_pretrained(lm_dir)
        table = AutoModelForCausalLM.from_pretrained(lm_dir).get_input_embeddings().weight.detach().clone()
        self.register_buffer("table", table, persistent=False)       # [vocab, d_lm], frozen
        self.proj = torch.nn.Linear(table.shape[1], hidden)
        self.pos = torch.nn.Parameter(torch.zeros(max_tokens, hidden))
        self.layer = torch.nn.TransformerEncoderLayer(hidden, max(1, hidden // 32), 4 * hidden, dropout=0.0,
                                                      batch_first=True, norm_first=True)

    def forward(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        ids, mask = enc["input_ids"][:, :len(self.pos)], enc["attention_mask"][:, :len(self.pos)].bool()
        x = self.proj(self.table[ids]) + self.pos[:ids.shape[1]]
        x = self.layer(x, src_key_padding_mask=~mask)
        return (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, same: torch.Tensor, logit_scale) -> torch.Tensor:
    """Symmetric InfoNCE. img, txt [n, d] (unnormalised); same [n, n] bool, True where two
    captions are identical (1-object scenes repeat: those are not negatives of each other)."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * img @ txt.T          # [n_images, n_texts]
    target = same.float() / same.float().sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def train_clip_tower(out_dir: str | Path, *, image_size: int = 32, patch: int = 8, hidden: int = 64,
                     layers: int = 3, steps: int = 300, batch: int = 128, lr: float = 4e-3,
                     seed: int = 0, twins: float = 0.0, probe_scenes: int = 2000,
                     text_lm: str | Path | None = None, progress: bool = True) -> tuple[Path, dict]:
    """Train (or load the cached) CLIPVisionModel against English captions; save it with a
    CLIPImageProcessor. text_lm: a miniature LM directory whose tokenizer and input embeddings
    read the captions (LMCaptionEncoder); None: a CLIP text model over its own word list. Metrics: caption retrieval among 200 held-out images (top-1, exact
    caption), and `probe`."""
    from tqdm.auto import tqdm
    from transformers import CLIPVisionConfig, CLIPVisionModel

    out_dir = Path(out_dir)
    settings = {"kind": "clip", "image_size": image_size, "patch": patch, "hidden": hidden,
                "layers": layers, "steps": steps, "batch": batch, "lr": lr, "seed": seed,
                "twins": twins, "probe_scenes": probe_scenes}
    if text_lm is not None:   # the LM's own build settings join the key: a rebuilt LM rebuilds CLIP
        settings["text_lm"] = json.loads((Path(text_lm) / "DONE").read_text())
    if is_done(out_dir, settings):
        return out_dir, json.loads((out_dir / "metrics.json").read_text())
    fresh_dir(out_dir)
    start = time.perf_counter()
    train = scenes(steps * batch, seed, "clip-train", image_size)
    vocab = sorted({w for s in train[:2000] for w in _words(caption(s))})
    torch.manual_seed(seed)
    vision = CLIPVisionModel(CLIPVisionConfig(image_size=image_size, patch_size=patch,
                                              **_vision_dims(hidden, layers)))
    # English captions of ~25 words: one layer reads them
    text = CaptionEncoder(vocab, hidden, layers=1) if text_lm is None else LMCaptionEncoder(text_lm, hidden)
    heads = torch.nn.ModuleDict({"img": torch.nn.Linear(hidden, hidden, bias=False),
                                 "txt": torch.nn.Linear(hidden, hidden, bias=False)})
    logit_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    params = [*vision.parameters(), *text.parameters(), *heads.parameters(), logit_scale]
    twin_rng = random.Random(f"clip-twins:{seed}")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    losses = []
    for step in tqdm(range(steps), desc="CLIP tower", disable=not progress, mininterval=2):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        chunk = with_twins(train[step * batch:(step + 1) * batch], twins, twin_rng)
        captions = [caption(s) for s in chunk]
        same = torch.tensor([[a == b for b in captions] for a in captions])    # [n, n]
        img = heads["img"](vision(pixel_values=pixels(chunk, CLIP_MEAN, CLIP_STD)).pooler_output)
        loss = clip_loss(img, heads["txt"](text(captions)), same, logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        report_progress("CLIP tower", step + 1, steps)
    vision.eval()
    test = scenes(200, seed, "clip-test", image_size)
    with torch.no_grad():
        img = F.normalize(heads["img"](vision(pixel_values=pixels(test, CLIP_MEAN, CLIP_STD)).pooler_output), dim=-1)
        txt = F.normalize(heads["txt"](text([caption(s) for s in test])), dim=-1)
    caps = [caption(s) for s in test]
    hits = [caps[j] == caps[i] for i, j in enumerate((img @ txt.T).argmax(1).tolist())]
    metrics = _finish(vision, image_processor("clip", image_size), out_dir, settings, losses, start,
                      CLIP_MEAN, CLIP_STD, {"retrieval_top1": sum(hits) / len(hits)})
    return out_dir, metrics


# --- DINOv2: self-supervised, no language ---------------------------------------------------------

def shifted(x: torch.Tensor, background: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A view of each image translated by up to MAX_SHIFT px, new border filled with the
    background: colours and shapes unchanged (what the tasks ask about), position nearly so.
    x [n, 3, s, s]; background [3] (normalised) -> [n, 3, s, s]."""
    n, _, s, _ = x.shape
    m = MAX_SHIFT
    padded = background.view(1, 3, 1, 1).expand(n, 3, s + 2 * m, s + 2 * m).clone()
    padded[:, :, m:m + s, m:m + s] = x
    dx, dy = torch.randint(0, 2 * m + 1, (2, n), generator=gen).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + s, dx[i]:dx[i] + s] for i in range(n)])


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's NT-Xent between two views: a, b [n, d]; row i of a and b are the positive pair,
    the other 2n - 2 embeddings of the batch the negatives."""
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=-1)                      # [2n, d]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[n, 3, s, s] -> [n, (s / patch) ** 2, 3 * patch * patch], patches in row-major order
    (the order of the tower's patch tokens)."""
    return F.unfold(x, kernel_size=patch, stride=patch).transpose(1, 2)


def train_dino_tower(out_dir: str | Path, *, image_size: int = 32, patch: int = 8, hidden: int = 64,
                     layers: int = 3, steps: int = 300, batch: int = 128, lr: float = 2e-3,
                     seed: int = 0, mask_ratio: float = 0.3, twins: float = 0.0,
                     probe_scenes: int = 2000, progress: bool = True) -> tuple[Path, dict]:
    """Train (or load the cached) Dinov2Model self-supervised without any text, with DINOv2's two
    kinds of objective in their simplest stable form:
    - image level: SimCLR agreement between two shifted views of each image (on the CLS output),
      which cannot collapse (other images are negatives) and needs no teacher schedule;
    - patch level: `mask_ratio` of the second view's patches are replaced by the mask token
      (as in iBOT / DINOv2) and their pixels predicted from the output tokens (SimMIM), which
      keeps local shape in the patch tokens LLaVA reads (SimCLR alone is solved by colour and
      place: every scene in a batch differs in those).
    Saved with a BitImageProcessor (DINOv2's processor class). Metrics: `probe`."""
    from tqdm.auto import tqdm
    from transformers import Dinov2Config, Dinov2Model

    out_dir = Path(out_dir)
    settings = {"kind": "dino", "image_size": image_size, "patch": patch, "hidden": hidden,
                "layers": layers, "steps": steps, "batch": batch, "lr": lr, "seed": seed,
                "mask_ratio": mask_ratio, "twins": twins, "probe_scenes": probe_scenes}
    if is_done(out_dir, settings):
        return out_dir, json.loads((out_dir / "metrics.json").read_text())
    fresh_dir(out_dir)
    start = time.perf_counter()
    train = scenes(steps * batch, seed, "dino-train", image_size)
    n_patches = (image_size // patch) ** 2
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dims = _vision_dims(hidden, layers)
    vision = Dinov2Model(Dinov2Config(image_size=image_size, patch_size=patch, hidden_size=hidden,
                                      num_hidden_layers=layers, num_attention_heads=dims["num_attention_heads"],
                                      mlp_ratio=4, initializer_range=hidden ** -0.5))
    head = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden))
    pixel_head = torch.nn.Linear(hidden, 3 * patch * patch)
    params = [*vision.parameters(), *head.parameters(), *pixel_head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    twin_rng = random.Random(f"dino-twins:{seed}")
    background = (torch.tensor(BACKGROUND) / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    losses = []
    for step in tqdm(range(steps), desc="DINO tower", disable=not progress, mininterval=2):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        x = pixels(with_twins(train[step * batch:(step + 1) * batch], twins, twin_rng),
                   IMAGENET_MEAN, IMAGENET_STD)
        n = len(x)
        views = torch.cat([shifted(x, background, gen), shifted(x, background, gen)])   # [2n, 3, s, s]
        masked = torch.zeros(2 * n, n_patches, dtype=torch.bool)
        masked[n:] = torch.rand(n, n_patches, generator=gen) < mask_ratio   # second view only
        out = vision(pixel_values=views, bool_masked_pos=masked)
        z = head(out.pooler_output)                                      # [2n, hidden]
        predicted = pixel_head(out.last_hidden_state[:, 1:][masked])     # [n_masked, 3 * p * p]
        mim = F.mse_loss(predicted, patchify(views, patch)[masked]) if masked.any() else 0.0
        loss = info_nce(z[:n], z[n:]) + mim
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        report_progress("DINO tower", step + 1, steps)
    metrics = _finish(vision.eval(), image_processor("dino", image_size), out_dir, settings, losses,
                      start, IMAGENET_MEAN, IMAGENET_STD, {})
    return out_dir, metrics


# --- checks and saving -------------------------------------------------------------------------

@torch.no_grad()
def probe(vision, mean, std, seed: int, n_scenes: int = 2000, image_size: int = 32,
          patch: int = 8) -> dict[str, float]:
    """Test accuracy of probes for what the tasks ask, from the features LLaVA uses:
    - probe_color, probe_shape (linear), probe_shape_mlp (one hidden layer, like LLaVA's
      projector): colour / shape of each object from the mean of the patch tokens its bounding
      box touches, in hidden_states[-2] (== output of the second-to-last layer, LLaVA's
      vision_feature_layer=-2);
    - probe_count (linear): number of objects, from pooler_output (the tower's image summary).
    Chance: 1/6, 1/4, ~1/3. _finish adds the same probes of an untrained tower as a baseline.
    Probes fit on the first 3/4 of `n_scenes` held-out scenes and are scored on the rest."""
    n_train = n_scenes * 3 // 4
    data = scenes(n_scenes, seed, "probe", image_size)
    out = vision(pixel_values=pixels(data, mean, std), output_hidden_states=True)
    tokens = out.hidden_states[-2][:, 1:]                  # [n_images, n_patches, hidden]
    grid = image_size // patch
    feats, split, colors, shapes = [], [], [], []          # one row per object
    for i, s in enumerate(data):
        for o in s["objects"]:
            rows = range((o["y"] - o["r"]) // patch, (o["y"] + o["r"]) // patch + 1)
            cols = range((o["x"] - o["r"]) // patch, (o["x"] + o["r"]) // patch + 1)
            feats.append(tokens[i, [r * grid + c for r in rows for c in cols]].mean(0))
            split.append(i < n_train)
            colors.append(o["color"])
            shapes.append(o["shape"])
    x, train = torch.stack(feats).numpy(), np.array(split)
    return {"probe_color": _probe(x, colors, train), "probe_shape": _probe(x, shapes, train),
            "probe_shape_mlp": _probe(x, shapes, train, mlp=True),
            "probe_count": _probe(out.pooler_output.numpy(), [len(s["objects"]) for s in data],
                                  np.arange(len(data)) < n_train)}


def _probe(x: np.ndarray, y: list, train: np.ndarray, mlp: bool = False) -> float:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import RidgeClassifier   # closed form: ms, where LBFGS logistic took ~10 s
    from sklearn.neural_network import MLPClassifier
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    y = np.asarray(y)
    clf = (MLPClassifier((128,), max_iter=200, random_state=0) if mlp else RidgeClassifier(alpha=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return float(clf.fit(x[train], y[train]).score(x[~train], y[~train]))


def _finish(vision, processor, out_dir: Path, settings: dict, losses: list[float], start: float,
            mean, std, extra: dict) -> dict:
    """Probe the trained tower and an untrained one of the same config (the baseline that
    shows what training added), save tower + processor + metrics.json, then DONE."""
    train_s = time.perf_counter() - start
    size, patch, seed = settings["image_size"], settings["patch"], settings["seed"]
    probe_args = dict(n_scenes=settings["probe_scenes"], image_size=size, patch=patch)
    torch.manual_seed(seed + 1)
    untrained = {f"{k}_untrained": v for k, v in
                 probe(type(vision)(vision.config).eval(), mean, std, seed, **probe_args).items()}
    k = max(1, min(20, len(losses) // 5))
    metrics = {"kind": settings["kind"], "params": sum(p.numel() for p in vision.parameters()),
               "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k,
               "train_s": round(train_s, 1), **extra,
               **probe(vision, mean, std, seed, **probe_args), **untrained}
    metrics["wall_s"] = round(time.perf_counter() - start, 1)
    vision.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    mark_done(out_dir, settings)
    return metrics

