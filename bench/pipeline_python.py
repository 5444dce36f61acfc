"""The same job as `cohortcast run`, as a data team would write it in Python:
pandas ingest (same row rules, both metadata layouts), implicit ALS (CPU,
conjugate gradient, same factors / iterations / regularization / confidence),
scikit-learn KMeans on the unit-length user factors (same k), and the same
expected-CTR choice per cohort. Prints one JSON line: stage timings and CTR.

python bench/pipeline_python.py DATA_DIR [factors iterations regularization alpha cohorts history_weight]"""
import glob
import json
import os
import sys
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

data = sys.argv[1]
factors, iterations, reg, alpha, k, hw = (int(sys.argv[2]) if len(sys.argv) > 2 else 64,
                                          int(sys.argv[3]) if len(sys.argv) > 3 else 10,
                                          float(sys.argv[4]) if len(sys.argv) > 4 else 5.0,
                                          float(sys.argv[5]) if len(sys.argv) > 5 else 10.0,
                                          int(sys.argv[6]) if len(sys.argv) > 6 else 100,
                                          float(sys.argv[7]) if len(sys.argv) > 7 else 4.0)
t = {}
t0 = time.perf_counter()


def lines(name):
    files = sorted(f for f in glob.glob(os.path.join(data, name, "*")) if not os.path.basename(f).startswith(("_", ".")))
    return pd.concat([pd.read_csv(f, header=None, names=["line"], sep="\x1f", quoting=3, dtype=str,
                                  keep_default_na=False, engine="c") for f in files], ignore_index=True)["line"]


# Ingest: the same rules as cohortcast (4 fields, a 32-hex user id, a song id, numeric timestamp,
# yyyyMMdd date).
cs = lines("clickstream").str.split(",", expand=True)
ok = cs.notna().sum(axis=1).eq(4) if cs.shape[1] > 4 else pd.Series(True, index=cs.index)
cs = cs[ok].iloc[:, :4]
cs.columns = ["user_id", "ts", "song_id", "date"]
cs = cs[cs.user_id.str.fullmatch(r"[0-9a-fA-F]{32}") & (cs.song_id != "") & cs.ts.str.fullmatch(r"-?\d{1,18}")
        & cs.date.str.fullmatch(r"\d{8}")]
cs = cs.assign(user_id=cs.user_id.str.lower())
meta = lines("metadata")
song = meta.str.split(",", n=1).str[0]
artists = meta.str.split(",", n=1).str[1]
md = pd.DataFrame({"song_id": song, "artist_id": artists}).dropna()
md = md.assign(artist_id=md.artist_id.str.split(",")).explode("artist_id")
md = md[(md.song_id != "") & (md.artist_id != "")].drop_duplicates()
plays = cs[["user_id", "song_id"]].merge(md, on="song_id", how="inner")
counts = plays.groupby(["user_id", "artist_id"], sort=True).size().rename("plays").reset_index()
users = np.sort(counts.user_id.unique())
arts = np.sort(counts.artist_id.unique())
ui = np.searchsorted(users, counts.user_id.values)
ai = np.searchsorted(arts, counts.artist_id.values)
pc = sp.csr_matrix((counts.plays.values.astype(np.float32), (ui, ai)), shape=(len(users), len(arts)))
actor = lines("notification_actor").str.split(",", expand=True)
actor.columns = ["notification_id", "artist_id"]
actor = actor[(actor.notification_id != "") & (actor.artist_id != "")]
clicks = lines("notification_clicks").str.split(",", expand=True).iloc[:, :2]
clicks.columns = ["notification_id", "user_id"]
clicks = clicks.assign(user_id=clicks.user_id.str.lower()).drop_duplicates()
t["ingest"] = time.perf_counter() - t0

from implicit.cpu.als import AlternatingLeastSquares  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402

s = time.perf_counter()
conf = pc.copy()
conf.data = 1.0 + alpha * np.log1p(conf.data)
model = AlternatingLeastSquares(factors=factors, regularization=reg, alpha=1.0, iterations=iterations, use_cg=True,
                                calculate_training_loss=False, random_state=42, num_threads=0)
with threadpool_limits(limits=1, user_api="blas"):
    model.fit(conf, show_progress=False)
x, y = model.user_factors, model.item_factors
t["als"] = time.perf_counter() - s

s = time.perf_counter()
xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
labels = KMeans(n_clusters=k, n_init=1, random_state=42).fit_predict(xn)
t["kmeans"] = time.perf_counter() - s

# Expected-CTR choice: per cohort, the notification with the largest summed
# max over its artists of clamp(x·y, 0, 1) + history_weight * share.
s = time.perf_counter()
notes = sorted(actor.notification_id.unique())
n_arts = [np.searchsorted(arts, a) for a in (actor[actor.notification_id == n].artist_id.values for n in notes)]
n_arts = [[i for i, a in zip(idx, actor[actor.notification_id == n].artist_id.values) if i < len(arts) and arts[i] == a]
          for idx, n in zip(n_arts, notes)]
needed = sorted({a for l in n_arts for a in l})
col = {a: j for j, a in enumerate(needed)}
pref = np.clip(x @ y[needed].T, 0, 1)
share = (pc[:, needed].multiply(1.0 / np.maximum(np.asarray(pc.sum(axis=1)), 1e-12))).toarray()
aff = pref + hw * share
score = np.stack([aff[:, [col[a] for a in l]].max(axis=1) if l else np.zeros(len(users)) for l in n_arts], axis=1)
sums = np.zeros((k, len(notes)))
np.add.at(sums, labels, score)
choice = sums.argmax(axis=1)
push = choice[labels]
t["targeting"] = time.perf_counter() - s

clicked = set(zip(clicks.notification_id, clicks.user_id))
hits = sum((notes[p], u) in clicked for p, u in zip(push, users))
result = {"impl": "python", "users": int(len(users)), "artists": int(len(arts)), "pairs": int(pc.nnz),
          "ctr": hits / len(users), "timings_s": {**t, "total": time.perf_counter() - t0}}
truth_dir = os.path.join(data, "truth")
if os.path.exists(os.path.join(truth_dir, "click_probability.npy")):
    probs = np.load(os.path.join(truth_dir, "click_probability.npy"), mmap_mode="r")
    tu = pd.read_csv(os.path.join(truth_dir, "users.csv"), header=None, dtype=str)[0].values
    tn = pd.read_csv(os.path.join(truth_dir, "notifications.csv"), header=None, dtype=str)[0].values
    row = pd.Series(np.arange(len(tu)), index=tu)[users].values
    colmap = pd.Series(np.arange(len(tn)), index=tn)[np.array(notes)[push]].values
    result["expected_ctr"] = float(np.asarray(probs[row, colmap]).mean())
    result["oracle_expected_ctr"] = float(np.asarray(probs[row]).max(axis=1).mean())
print(json.dumps(result))
