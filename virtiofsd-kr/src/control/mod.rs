//! The control plane: commands, their options, and the processes they start.
//!
//! [`cli`] parses flags and converts them into each layer's own option types; [`daemon`]
//! assembles the vhost-user daemon from the layers below (socket, sandbox, backend,
//! seccomp, device), [`fusedev`] the host `/dev/fuse` mount; [`volume`] and
//! [`volume_serve`] administer and serve CephFS volumes; [`docker_plugin`] is the Docker
//! volume driver; [`logging`] sets up `tracing`. Only this layer reads the command line:
//! the layers below must not import [`cli`] (`tests/layering.rs` checks it), and nothing here
//! handles a guest request itself.

pub mod cli;
pub mod daemon;
pub mod docker_plugin;
pub mod fusedev;
pub mod logging;
pub mod stop;
pub mod volume;
pub mod volume_serve;
