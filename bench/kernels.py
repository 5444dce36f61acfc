"""Times implicit's CPU ALS (conjugate gradient) and scikit-learn's Lloyd
k-means on the matrices `examples/kernels.rs` wrote, with the same shapes,
confidence values, factors, regularization, CG steps, k and starting
centres. Prints one JSON line per measurement. Run through bench/kernels.sh."""
import json
import sys
import time

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

out, users, items, factors, reg = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
rows, cols = np.load(f"{out}/rows.npy"), np.load(f"{out}/cols.npy")
conf = np.load(f"{out}/conf.npy").ravel()
cui = sp.csr_matrix((conf, (rows, cols)), shape=(users, items), dtype=np.float32)

from implicit.cpu.als import AlternatingLeastSquares  # noqa: E402

times = []
model = AlternatingLeastSquares(factors=factors, regularization=reg, alpha=1.0, iterations=6, use_cg=True,
                                calculate_training_loss=False, random_state=0, num_threads=0)
model.cg_steps = 3  # implicit's default, set explicitly to match
with threadpool_limits(limits=1, user_api="blas"):
    model.fit(cui, show_progress=False, callback=lambda it, elapsed, loss: times.append(elapsed))
print(json.dumps({"kernel": "als", "impl": "implicit", "users": users, "items": items, "nnz": int(cui.nnz),
                  "factors": factors, "cg_steps": 3, "seconds_per_iteration": float(np.median(times[1:])),
                  "all": [round(t, 4) for t in times]}))

from sklearn.cluster import KMeans  # noqa: E402

x = np.load(f"{out}/factors.npy")
for k in (20, 100, 300):
    per = []
    for _ in range(3):
        km = KMeans(n_clusters=k, init=x[:k].copy(), n_init=1, max_iter=20, tol=0.0, algorithm="lloyd")
        t = time.perf_counter()
        km.fit(x)
        per.append((time.perf_counter() - t) / max(km.n_iter_, 1))
    print(json.dumps({"kernel": "kmeans", "impl": "scikit-learn", "rows": int(x.shape[0]), "dim": int(x.shape[1]),
                      "k": k, "seconds_per_iteration": float(np.median(per))}))
