//! `edgeqi-test-rtsp-server PORT FILE`: serves an H.264 MP4 at
//! `rtsp://127.0.0.1:PORT/street` with GStreamer's RTSP server, without
//! re-encoding. Each client gets the clip from the start. Prints `ready`
//! once it listens. The camera e2e tests kill and restart it to simulate a
//! camera going away.

use anyhow::{bail, Context, Result};
use gstreamer as gst;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, port, file] = args.as_slice() else {
        bail!("usage: edgeqi-test-rtsp-server PORT FILE.mp4");
    };
    if !std::path::Path::new(file).is_file() {
        bail!("{file} does not exist");
    }
    gst::init().context("GStreamer")?;
    let main_loop = gst::glib::MainLoop::new(None, false);
    let server = rtsp::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(port);
    let mounts = server.mount_points().context("mount points")?;
    let factory = rtsp::RTSPMediaFactory::new();
    // The location is quoted; test paths have no quotes in them.
    factory.set_launch(&format!(
        "( filesrc location=\"{file}\" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    ));
    factory.set_shared(false);
    mounts.add_factory("/street", factory);
    let _source = server.attach(None).context("cannot listen")?;
    println!("ready");
    main_loop.run();
    Ok(())
}
