"""The course pipeline on pyspark in local mode, as a data team would run it
on one machine: count plays per (user, song), StringIndexer on both ids, ALS
with implicitPrefs (rank 10), KMeans on the user factors, the most-played
artist of each cluster, and a push of that artist's notification to the
whole cluster. Prints one JSON line: stage timings and CTR, measured on the
same click log (and truth, on generated data) as cohortcast.

Every stage is forced (cache + count) before its clock stops, so the
timings are the work of that stage and not of Spark's lazy plan.

python bench/pipeline_spark.py DATA_DIR [clusters threads driver_memory]"""
import glob
import json
import os
import sys
import time

t0 = time.perf_counter()
data = sys.argv[1]
k = int(sys.argv[2]) if len(sys.argv) > 2 else 100
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
memory = sys.argv[4] if len(sys.argv) > 4 else "8g"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from pyspark.ml.clustering import KMeans  # noqa: E402
from pyspark.ml.feature import StringIndexer  # noqa: E402
from pyspark.ml.recommendation import ALS  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql import Window  # noqa: E402
from pyspark.sql.types import StringType, StructField, StructType  # noqa: E402

spark = (SparkSession.builder.master(f"local[{threads}]").appName("cohortcast-bench")
         .config("spark.driver.memory", memory)
         .config("spark.sql.shuffle.partitions", str(4 * threads))
         .config("spark.ui.enabled", "false")
         .config("spark.sql.adaptive.enabled", "true")
         .getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
spark.sparkContext.setCheckpointDir(os.path.join(os.environ.get("TMPDIR", "/tmp"), "cc-spark-checkpoints"))
t = {"startup": time.perf_counter() - t0}


def files(name):
    return sorted(f for f in glob.glob(os.path.join(data, name, "*")) if not os.path.basename(f).startswith(("_", ".")))


def text(name):
    return spark.read.text(files(name)).select(F.rtrim(F.col("value")).alias("line"))


s = time.perf_counter()
# Ingest: the same row rules as cohortcast (4 fields, a 32-hex user id, a
# song id, a numeric timestamp, a yyyyMMdd date).
cs = text("clickstream").select(F.split("line", ",").alias("f"))
cs = cs.where((F.size("f") == 4) & F.col("f")[0].rlike("^[0-9a-fA-F]{32}$") & (F.col("f")[2] != "")
              & F.col("f")[1].rlike("^-?[0-9]{1,18}$") & F.col("f")[3].rlike("^[0-9]{8}$"))
cs = cs.select(F.lower(F.col("f")[0]).alias("user_id"), F.col("f")[2].alias("song_id"))
counts = cs.groupBy("user_id", "song_id").agg(F.count(F.lit(1)).alias("plays"))
indexed = StringIndexer(inputCol="user_id", outputCol="user").fit(counts).transform(counts)
indexed = StringIndexer(inputCol="song_id", outputCol="song").fit(indexed).transform(indexed)
indexed = indexed.withColumn("user", F.col("user").cast("int")).withColumn("song", F.col("song").cast("int")).cache()
pairs = indexed.count()
meta = text("metadata").select(F.split("line", ",").alias("f"))
meta = meta.select(F.col("f")[0].alias("song_id"), F.explode(F.slice("f", 2, 1 << 20)).alias("artist_id"))
meta = meta.where((F.col("song_id") != "") & (F.col("artist_id") != "")).distinct().cache()
meta.count()
t["ingest"] = time.perf_counter() - s

s = time.perf_counter()
als = ALS(rank=10, maxIter=10, implicitPrefs=True, userCol="user", itemCol="song", ratingCol="plays", seed=42,
          coldStartStrategy="drop")
model = als.fit(indexed)
user_factors = model.userFactors.cache()
user_factors.count()
t["als"] = time.perf_counter() - s

s = time.perf_counter()
from pyspark.ml.functions import array_to_vector  # noqa: E402

vectors = user_factors.select(F.col("id").alias("user"), array_to_vector("features").alias("features"))
clusters = KMeans(k=k, seed=42, featuresCol="features", predictionCol="cluster").fit(vectors).transform(vectors)
clusters = clusters.select("user", "cluster").cache()
clusters.count()
t["kmeans"] = time.perf_counter() - s

s = time.perf_counter()
# The cluster's most-played artist, and that artist's notification.
actor = text("notification_actor").select(F.split("line", ",").alias("f"))
actor = actor.where(F.size("f") == 2).select(F.col("f")[0].alias("notification_id"), F.col("f")[1].alias("artist_id"))
played = (indexed.join(clusters, "user").join(meta, "song_id")
          .groupBy("cluster", "artist_id").agg(F.sum("plays").alias("plays")))
best = played.withColumn("r", F.row_number().over(Window.partitionBy("cluster").orderBy(F.desc("plays"), "artist_id")))
best = best.where(F.col("r") == 1).select("cluster", "artist_id")
note = actor.groupBy("artist_id").agg(F.min("notification_id").alias("notification_id"))
choice = best.join(note, "artist_id")
users = indexed.select("user", "user_id").distinct()
pushes = clusters.join(choice, "cluster").join(users, "user").select("user_id", "notification_id").toPandas()
all_users = users.count()
t["targeting"] = time.perf_counter() - s
t["total"] = time.perf_counter() - t0

clicks = pd.concat([pd.read_csv(f, header=None, usecols=[0, 1], names=["notification_id", "user_id"], dtype=str)
                    for f in files("notification_clicks")]).drop_duplicates()
clicked = set(zip(clicks.notification_id, clicks.user_id.str.lower()))
hits = sum((n, u) in clicked for n, u in zip(pushes.notification_id, pushes.user_id))
result = {"impl": "spark", "users": int(all_users), "pairs": int(pairs), "pushed": int(len(pushes)),
          "ctr": hits / max(len(pushes), 1), "timings_s": t}
truth_dir = os.path.join(data, "truth")
if os.path.exists(os.path.join(truth_dir, "click_probability.npy")) and len(pushes):
    probs = np.load(os.path.join(truth_dir, "click_probability.npy"), mmap_mode="r")
    tu = pd.read_csv(os.path.join(truth_dir, "users.csv"), header=None, dtype=str)[0].values
    tn = pd.read_csv(os.path.join(truth_dir, "notifications.csv"), header=None, dtype=str)[0].values
    row = pd.Series(np.arange(len(tu)), index=tu)[pushes.user_id.values].values
    col = pd.Series(np.arange(len(tn)), index=tn)[pushes.notification_id.values].values
    result["expected_ctr"] = float(np.asarray(probs[row, col]).mean())
print(json.dumps(result))
spark.stop()
