//! Empty: the datapath is the `lb` binary (main.rs). The library target
//! lets lb-userspace name this crate as a build dependency, so that cargo
//! rebuilds the embedded object when it changes.
#![no_std]
#![expect(
    unused_crate_dependencies,
    reason = "the dependencies are the binary's"
)]
