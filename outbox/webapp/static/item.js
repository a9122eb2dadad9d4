// One upload in the page's list: name, status badge, the steps so far, one progress bar for
// the whole file, how many parts are sent, and its Cancel / Retry / Download controls.

const $ = (selector, root) => root.querySelector(selector);

/** A new item at the top of `list`, from the page's #upload-item template. */
export function newItem(list, name, downloadLink) {
  const node = document.getElementById("upload-item").content.firstElementChild.cloneNode(true);
  $(".name", node).textContent = name;
  list.prepend(node);
  const statusEl = $(".status", node);
  const bar = $("progress", node);
  const error = $(".error", node);
  const cancel = $("button.cancel", node);
  const retry = $("button.retry", node);
  const steps = [];
  return {
    node,
    set documentId(id) { node.dataset.documentId = id; },
    status(state) {
      statusEl.textContent = state;
      statusEl.className = `status badge ${state}`;
      node.dataset.status = state;
      if (steps[steps.length - 1] !== state) steps.push(state);
      $(".steps", node).textContent = steps.join(" → ");
    },
    progress(fraction) { bar.value = Math.floor(Math.min(1, fraction) * 100); },
    parts(done, total) {
      node.dataset.partsDone = String(done);
      $(".parts", node).textContent = `${done} of ${total} parts`;
    },
    /** Which controls show: cancel (delete the document), retry (run the upload again). */
    controls({ canCancel = false, canRetry = false } = {}) {
      cancel.hidden = !canCancel;
      retry.hidden = !canRetry;
    },
    onCancel(fn) { cancel.addEventListener("click", fn); },
    onRetry(fn) { retry.addEventListener("click", fn); },
    fail(message, canRetry = false) {
      this.status("failed");
      error.textContent = message;
      error.hidden = false;
      this.controls({ canCancel: canRetry, canRetry });
    },
    clearError() { error.hidden = true; error.textContent = ""; },
    available(id) {
      const a = $("a.download", node);
      downloadLink(a, id);
      a.hidden = false;
    },
  };
}
