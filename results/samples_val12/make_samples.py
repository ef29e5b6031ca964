"""Per val-12 clip: keyframe (frame 0) and its self-reconstruction, four driving frames and
their reconstructions from the keyframe (shipped weights, CPU float32, unquantized keypoints)."""
import numpy as np, torch, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from codec.data import load_crop_cache
from codec.weights import load_model
from codec.inference import reconstruct, self_reconstruct
torch.set_num_threads(2)
model = load_model(None).eval()
for clip in load_crop_cache("/work/main/.cache/crops_val_256"):
    frames = np.asarray(clip.frames)
    T = len(frames)
    idx = [0] + [int(T * f) for f in (0.2, 0.4, 0.6, 0.8)]
    x = torch.from_numpy(frames[idx]).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        pred, _, _ = reconstruct(model, x[:1], x[1:])
        selfr = self_reconstruct(model, x[:1])
    psnr = lambda a, b: float(10 * torch.log10(1 / ((a - b) ** 2).mean()))
    fig, axes = plt.subplots(2, 5, figsize=(15, 6.4))
    for c in range(5):
        top, bottom = x[c], (selfr[0] if c == 0 else pred[c - 1])
        t_top = "keyframe (frame 0)" if c == 0 else f"driving frame {idx[c]}"
        t_bot = "keyframe from itself" if c == 0 else "reconstruction"
        t_bot += f"  {psnr(bottom, top):.1f} dB"
        if c > 0:
            t_bot += f" (frozen {psnr(x[0], top):.1f})"
        for r, (img, t) in enumerate([(top, t_top), (bottom, t_bot)]):
            axes[r, c].imshow(img.permute(1, 2, 0).clamp(0, 1).numpy()); axes[r, c].set_title(t, fontsize=8); axes[r, c].axis("off")
    fig.suptitle(clip.name, fontsize=9); fig.tight_layout()
    fig.savefig(f"/work/main/results/samples_val12/{clip.name}.png", dpi=60); plt.close(fig)
    print(clip.name, flush=True)
