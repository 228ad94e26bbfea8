//! The Docker backend of proxy-runner: one hardened, ephemeral container per
//! job, on a network of its repository, and a builder for the local runner
//! image (built from scratch, so nothing is ever pulled). For the proxy
//! path, [`DockerBackend`] also implements the `JobContainers` port: the
//! long-lived job container the runner's container hooks run steps in.

mod backend;
mod errors;
pub mod image;
mod job_containers;
mod transport;

pub use backend::{
    DEFAULT_DOCKER_HOST, DockerBackend, DockerOptions, HOST_GATEWAY_ENTRY, IMAGE_LABEL, host_config,
};
pub use image::{
    RunnerImageOptions, TEST_BUSYBOX_IMAGE, build_runner_image, build_test_busybox_image,
    ensure_runner_image, ensure_test_busybox_image,
};
pub use job_containers::DEFAULT_PATH;
