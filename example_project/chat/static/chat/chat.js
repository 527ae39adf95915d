import { cancel, drive, readBody, watch } from "/static/streaming_app/client.js";

const messages = document.getElementById("messages");
const form = document.getElementById("ask");
const errorBox = document.getElementById("error");
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

function addMessage(prompt) {
  const p = document.createElement("div");
  p.className = "prompt";
  p.textContent = prompt;
  const reply = document.createElement("div");
  reply.className = "reply";
  const status = document.createElement("div");
  status.className = "status";
  messages.append(p, reply, status);
  return { reply, status };
}

function showLink() {
  document.getElementById("link").textContent = chatId ? `— share: ${location.origin}/chats/${chatId}/` : "";
}

async function ask(prompt) {
  const created = chatId
    ? await postJSON(`/api/chats/${chatId}/messages/`, { prompt })
    : await postJSON("/api/chats/", { prompt });
  if (!chatId) {
    chatId = created.id;
    history.pushState(null, "", created.url);
    showLink();
  }
  const view = addMessage(prompt);
  view.status.textContent = "streaming…";
  const stop = document.createElement("button");
  stop.textContent = "Stop";
  stop.className = "stop";
  stop.onclick = () => cancel(`/api/streams/${created.stream_id}/cancel/`, {
    headers: { "X-CSRFToken": csrfToken() },
  });
  view.status.after(stop);
  await drive(created.drive_url, {
    headers: { "X-CSRFToken": csrfToken() },
    onText: (text) => { view.reply.textContent = text; },
  });
  // The last flush may still be committing: follow the stream to its status.
  await follow(created.stream_id, view, codePointsOf(view.reply.textContent));
  stop.remove();
}

function codePointsOf(text) {
  return [...text].length;
}

function showStatus(view, status, error) {
  view.status.textContent = error ? `${status}: ${error}` : status;
}

// Watch a stream live from `offset`, over the websocket; resolves when it has ended.
function follow(streamId, view, offset = 0) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const base = view.reply.textContent;
  const watcher = watch(`${scheme}://${location.host}/ws/streams/${streamId}/`, {
    offset,
    onText: (text) => { view.reply.textContent = base + text; },
    onStatus: (status, error) => showStatus(view, status, error),
  });
  return watcher.done;
}

async function load() {
  if (!chatId) return;
  showLink();
  const response = await fetch(`/api/chats/${chatId}/`, { credentials: "same-origin" });
  const chat = await response.json();
  form.hidden = !chat.owner;
  const live = [];
  for (const message of chat.messages) {
    const view = addMessage(message.prompt);
    if (!message.stream_id) continue;
    const body = await readBody(`/api/streams/${message.stream_id}/`);
    view.reply.textContent = body.text;
    showStatus(view, body.status, body.error);
    if (body.status === "pending" && chat.owner) {
      // Created but never driven (the page was closed in between): drive it now.
      live.push(drive(`/api/chats/${chatId}/stream/`, {
        headers: { "X-CSRFToken": csrfToken() },
        onText: (text) => { view.reply.textContent = text; },
      }).then(() => follow(message.stream_id, view, codePointsOf(view.reply.textContent))));
    } else if (body.status === "pending" || body.status === "streaming") {
      live.push(follow(message.stream_id, view, body.length));
    }
  }
  await Promise.all(live);
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const prompt = form.prompt.value;
  form.prompt.value = "";
  errorBox.textContent = "";
  form.querySelector("button").disabled = true;
  try {
    await ask(prompt);
  } catch (error) {
    errorBox.textContent = error.message;
  } finally {
    form.querySelector("button").disabled = false;
  }
});

load().catch((error) => { errorBox.textContent = error.message; });
