"""Themes: encoding plus clustering of 50,000 segments, batched, against one at a time.

Segments are 50,000 sentences of the organism's story world (seeded). The batched path is
difflens's: ``embed_texts`` (batches of 256) and k-means (k = 10) with vectorised nearest-
centroid assignment. The baseline encodes one segment per ``encode`` call and assigns it
with its own loop. Both run in this process. By default the baseline runs on the first
2,000 segments and its per-segment time is scaled to 50,000: it takes about 7 minutes on 2
cores in full, and ``--full`` runs it on all of them. ``--device cuda`` runs both on a GPU.
The two paths' embeddings of the timed segments must agree. Last line: ``batched_s=<a>
one_at_a_time_s=<b> measured_on=<n> themes_speedup=<x>``.
"""

import sys
import time

import numpy as np

from difflens.analysis.embeddings import embed_texts, load_encoder
from difflens.organism import world as W


def main() -> None:
    full = "--full" in sys.argv
    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
    n = 50_000
    segs: list[str] = []
    seed = 0
    while len(segs) < n:
        segs += [s for st in W.generate_stories(2000, seed=seed) for s in st.sentences]
        seed += 1
    segs = segs[:n]
    load_encoder(device=device)  # load once, outside both timings
    embed_texts(segs[:64], device=device)

    from sklearn.cluster import KMeans

    t0 = time.perf_counter()
    emb = embed_texts(segs, batch_size=256, device=device)
    km = KMeans(n_clusters=10, n_init=1, random_state=0).fit(emb)
    cent = km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)
    labels = (emb @ cent.T).argmax(1)
    batched = time.perf_counter() - t0

    m = n if full else 2000
    model = load_encoder(device=device)
    t0 = time.perf_counter()
    single, assigned = [], []
    for s in segs[:m]:
        v = model.encode([s], convert_to_numpy=True, show_progress_bar=False)[0]
        v = v / np.linalg.norm(v)
        single.append(v)
        best, best_sim = 0, -2.0
        for j, c in enumerate(cent):
            sim = float(v @ c)
            if sim > best_sim:
                best, best_sim = j, sim
        assigned.append(best)
    loop = (time.perf_counter() - t0) * n / m
    diff = float(np.abs(np.asarray(single) - emb[:m]).max())
    agree = float(np.mean(np.asarray(assigned) == labels[:m]))
    print(f"batched: {batched:.1f} s for {n} segments (embed + k-means + assignment)")
    print(f"one at a time: {loop:.1f} s for {n} segments "
          f"({'measured' if full else f'measured on {m}, scaled'}); max embedding difference "
          f"{diff:.1e}, same theme for {agree:.4f}")
    print(f"batched_s={batched:.1f} one_at_a_time_s={loop:.1f} measured_on={m} "
          f"themes_speedup={loop / batched:.1f}")


if __name__ == "__main__":
    main()
