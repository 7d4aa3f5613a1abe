"""``python -m keras_opt``: train a small model with every optimizer, compare with tf_keras."""

from keras_opt.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
