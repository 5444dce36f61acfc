"""The S3 side of the end-to-end tests, with boto3 (a client independent of
cohortcast's): set up a moto server's credentials and buckets, upload a
folder, download a prefix, list a prefix.

    s3_helper.py setup ENDPOINT BUCKET...        prints ACCESS_KEY SECRET_KEY
    s3_helper.py upload ENDPOINT DIR s3://b/prefix
    s3_helper.py download ENDPOINT s3://b/prefix DIR
    s3_helper.py list ENDPOINT s3://b/prefix      prints one key a line

Except for setup, credentials come from AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY. The server is started with
INITIAL_NO_AUTH_ACTION_COUNT=3: setup's three IAM calls create a user
with full rights and its key; every request after them is checked.
"""

import json
import os
import sys

import boto3


def client(service, endpoint, key=None, secret=None):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        aws_access_key_id=key or os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret or os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


def split(url):
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def main():
    cmd, endpoint, *rest = sys.argv[1:]
    if cmd == "setup":
        iam = client("iam", endpoint, "setup", "setup")
        iam.create_user(UserName="cohortcast")
        key = iam.create_access_key(UserName="cohortcast")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="cohortcast", PolicyName="all", PolicyDocument=json.dumps(policy))
        s3 = client("s3", endpoint, key["AccessKeyId"], key["SecretAccessKey"])
        for bucket in rest:
            s3.create_bucket(Bucket=bucket)
        print(key["AccessKeyId"], key["SecretAccessKey"])
    elif cmd == "upload":
        local, url = rest
        bucket, prefix = split(url)
        s3 = client("s3", endpoint)
        for root, _, files in os.walk(local):
            for f in sorted(files):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, local).replace(os.sep, "/")
                s3.upload_file(path, bucket, f"{prefix}/{rel}" if prefix else rel)
    elif cmd == "download":
        url, local = rest
        bucket, prefix = split(url)
        s3 = client("s3", endpoint)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            for o in page.get("Contents", []):
                path = os.path.join(local, o["Key"][len(prefix) + 1 :])
                os.makedirs(os.path.dirname(path), exist_ok=True)
                s3.download_file(bucket, o["Key"], path)
    elif cmd == "list":
        (url,) = rest
        bucket, prefix = split(url)
        s3 = client("s3", endpoint)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                print(o["Key"])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
