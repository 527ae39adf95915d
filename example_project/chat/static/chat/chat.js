// The example chat: each reply is a <stream-text> element (streaming_app's), which
// drives the reply from this browser when it is still to be generated and watches it
// otherwise, and renders its Markdown safely as it arrives.
import "/static/streaming_app/stream-text.js";

const messages = document.getElementById("messages");
const form = document.getElementById("ask");
const errorBox = document.getElementById("error");
const deleteButton = document.getElementById("delete-chat");
let chatId = messages.dataset.chatId || null;

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function postJSON(url, data) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
    body: JSON.stringify(data),
    credentials: "same-origin",
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// A Stop button beside a live reply of ours, gone once the reply has ended.
function addStop(reply) {
  if (["done", "error", "cancelled", "timeout"].includes(reply.status)) return;
  const stop = document.createElement("button");
  stop.textContent = "Stop";
  stop.className = "stop";
  stop.onclick = () => reply.cancel().catch((error) => { errorBox.textContent = error.message; });
  reply.append(stop);
  reply.addEventListener("stream-end", () => stop.remove(), { once: true });
}

function busy(reply) {
  const button = form.querySelector("button");
  button.disabled = true;
  reply.addEventListener("stream-end", () => { button.disabled = false; }, { once: true });
}

async function ask(prompt) {
  const created = chatId
    ? await postJSON(`/api/chats/${chatId}/messages/`, { prompt })
    : await postJSON("/api/chats/", { prompt });
  if (!chatId) {
    chatId = created.id;
    history.pushState(null, "", created.url);
    const link = document.getElementById("link");
    link.textContent = "— share: ";
    const a = document.createElement("a");
    a.href = created.url;
    a.textContent = `${location.origin}${created.url}`;
    link.append(a);
    if (deleteButton) deleteButton.hidden = false;
  }
  const p = document.createElement("div");
  p.className = "prompt";
  p.textContent = prompt;
  const reply = document.createElement("stream-text");
  reply.setAttribute("stream-id", created.stream_id);
  reply.setAttribute("status", "pending");
  reply.setAttribute("offset", "0");
  reply.setAttribute("drive-url", created.drive_url);
  reply.setAttribute("markdown", "");
  messages.append(p, reply);
  addStop(reply);
  busy(reply);
}

// The replies the server rendered: a Stop button on ours while it is live.
if (!form.hidden) {
  const last = messages.querySelector("stream-text:last-of-type");
  if (last && !["done", "error", "cancelled", "timeout"].includes(last.getAttribute("status"))) {
    addStop(last);
    busy(last);
  }
}

// Delete the chat (its owner's): its replies stop, and its link stops working.
if (deleteButton) {
  deleteButton.addEventListener("click", async () => {
    if (!chatId || !confirm("Delete this chat and its replies? Its link will stop working.")) return;
    errorBox.textContent = "";
    try {
      const response = await fetch(`/api/chats/${chatId}/`, {
        method: "DELETE",
        headers: { "X-CSRFToken": csrfToken() },
        credentials: "same-origin",
      });
      if (!response.ok) throw new Error((await response.json()).error || response.statusText);
      location.assign("/");
    } catch (error) {
      errorBox.textContent = error.message;
    }
  });
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const prompt = form.prompt.value;
  form.prompt.value = "";
  errorBox.textContent = "";
  try {
    await ask(prompt);
  } catch (error) {
    errorBox.textContent = error.message;
  }
});
