"""keras_opt: tf_keras's legacy OptimizerV2 optimizers, reimplemented TensorFlow-native."""

from setuptools import find_packages, setup

# tf_keras releases track TensorFlow's minor version (tf_keras 2.X pairs with tensorflow 2.X).
COMPARE_REQUIRES = ["tf_keras>=2.16"]
# tensorboard: keras.callbacks.TensorBoard needs it to write event files; the test that
# the learning rate reaches TensorBoard's log reads those files back.
TEST_REQUIRES = ["pytest>=7", "tensorboard"] + COMPARE_REQUIRES

setup(
    name="keras_opt",
    version="0.1.0",
    description="TensorFlow-native reimplementation of the tf.keras OptimizerV2 optimizers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["keras_opt", "keras_opt.*"]),
    # C++ sources of the fused kernels, built on first use (keras_opt/kernels/build.py).
    package_data={"keras_opt.kernels": ["*.cc", "*.h"]},
    python_requires=">=3.9",
    install_requires=["tensorflow>=2.16", "numpy", "absl-py"],
    extras_require={"compare": COMPARE_REQUIRES, "test": TEST_REQUIRES},
    license="Apache-2.0",
)
