// The Instance page's consoles: the serial console in xterm.js and the display in noVNC,
// both WebSockets to the console proxy on this same origin, which signs them in with the
// page's session cookie (the token itself never reaches this script).
import RFB from "/static/vendor/novnc/core/rfb.js";

const section = document.querySelector(".consoles");
const url = (path) => `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
const said = (id, text) => { document.getElementById(id).textContent = text; };
const closed = (event) => `Closed: ${event.reason || "code " + event.code}`;

document.getElementById("serial-connect").addEventListener("click", (event) => {
  event.target.disabled = true;
  const terminal = new window.Terminal({ cursorBlink: true, rows: 24, cols: 80 });
  terminal.open(document.getElementById("serial"));
  const socket = new WebSocket(url(section.dataset.console), ["binary"]);
  socket.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  socket.addEventListener("open", () => { said("serial-state", "Connected"); terminal.focus(); });
  socket.addEventListener("message", (message) => terminal.write(new Uint8Array(message.data)));
  socket.addEventListener("close", (closing) => {
    said("serial-state", closed(closing));
    event.target.disabled = false;
  });
  terminal.onData((data) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
  });
});

document.getElementById("vnc-connect").addEventListener("click", (event) => {
  event.target.disabled = true;
  const display = new RFB(document.getElementById("vnc"), url(section.dataset.vnc),
                          { wsProtocols: ["binary"] });
  display.scaleViewport = false;  // the guest's screen at its own size, scrolled if wider
  display.addEventListener("connect", () => said("vnc-state", "Connected"));
  display.addEventListener("disconnect", (closing) => {
    said("vnc-state", closing.detail.clean ? "Disconnected" : "Closed by the proxy or the node");
    event.target.disabled = false;
  });
});
