// The call's viewer: frames arrive as JPEG over a websocket from the local peer process.
// Binary message: byte 0 kind (1 remote frame, 2 local preview, 3 audio PCM), bytes 1-4 frame
// index (uint32 little-endian), then the payload. Text messages are JSON (stats, status).
"use strict";

const canvases = { 1: document.getElementById("remote"), 2: document.getElementById("local") };
const busy = { 1: false, 2: false };
const latest = { 1: null, 2: null };
let audio = null;
let audioTime = 0;

function text(id, value) {
  const el = document.getElementById(id);
  if (el) el.textContent = value;
}

function fmt(x, digits) {
  return (x === null || x === undefined || Number.isNaN(x)) ? "–" : Number(x).toFixed(digits);
}

async function draw(kind) {
  // decode one picture at a time per canvas and keep only the newest waiting one
  if (busy[kind] || latest[kind] === null) return;
  busy[kind] = true;
  const { index, blob } = latest[kind];
  latest[kind] = null;
  try {
    const bitmap = await createImageBitmap(blob);
    const canvas = canvases[kind];
    if (canvas.width !== bitmap.width) { canvas.width = bitmap.width; canvas.height = bitmap.height; }
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    if (kind === 1) text("remote-index", "frame " + index);
  } catch (e) {
    // a picture that does not decode is skipped; the next one replaces it
  }
  busy[kind] = false;
  draw(kind);
}

function playAudio(buffer) {
  if (audio === null || audio.state !== "running") return;
  const pcm = new Int16Array(buffer);
  const data = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) data[i] = pcm[i] / 32768;
  const clip = audio.createBuffer(1, data.length, 48000);
  clip.copyToChannel(data, 0);
  const node = audio.createBufferSource();
  node.buffer = clip;
  node.connect(audio.destination);
  const now = audio.currentTime;
  if (audioTime < now + 0.05 || audioTime > now + 0.5) audioTime = now + 0.1;
  node.start(audioTime);
  audioTime += clip.duration;
}

function showStats(s) {
  text("payload-sent", fmt(s.payload_kbps_sent, 2));
  text("payload-received", fmt(s.payload_kbps_received, 2));
  text("wire-sent", fmt(s.wire_kbps_sent_data, 2));
  text("wire-received", fmt(s.wire_kbps_received_data, 2));
  text("wire-all-sent", fmt(s.wire_kbps_sent, 2));
  text("wire-all-received", fmt(s.wire_kbps_received, 2));
  text("fps-sent", fmt(s.fps_sent, 1));
  text("fps-shown", fmt(s.fps_shown, 1));
  text("keyframes-sent", s.keyframes_sent ?? "–");
  text("keyframes-received", s.keyframes_received ?? "–");
  text("latency", s.latency_ms === null || s.latency_ms === undefined ? "–" : fmt(s.latency_ms, 0) + " ms");
  text("rtt", s.rtt_ms === null || s.rtt_ms === undefined ? "–" : fmt(s.rtt_ms, 0) + " ms");
  text("lost", s.frames_lost ?? "–");
  text("resyncs", s.resync_requests ?? "–");
  text("device", s.device_note || "");
}

function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (event) => {
    if (typeof event.data === "string") {
      const msg = JSON.parse(event.data);
      if (msg.type === "stats") showStats(msg);
      else if (msg.type === "status") text("status", msg.text);
      return;
    }
    const view = new DataView(event.data);
    const kind = view.getUint8(0);
    const index = view.getUint32(1, true);
    const payload = event.data.slice(5);
    if (kind === 3) { playAudio(payload); return; }
    if (!(kind in canvases)) return;
    latest[kind] = { index, blob: new Blob([payload], { type: "image/jpeg" }) };
    draw(kind);
  };
  ws.onclose = () => {
    text("status", "the local peer is gone; retrying…");
    setTimeout(connect, 1000);
  };
}

document.getElementById("sound").addEventListener("click", () => {
  if (audio === null) audio = new AudioContext({ sampleRate: 48000 });
  audio.resume();
  document.getElementById("sound").textContent = "sound is on";
});

connect();
