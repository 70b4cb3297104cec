// A wasi-http guest written as a JavaScript user would write one, built by
// componentize-js: hello on every path but these three.
//
// - `POST /echo`: the request body back, byte for byte, streamed.
// - `/headers`: the request's headers, one `name: value` line each.
// - `/error`: throws, as a buggy handler would; the host answers 500.

addEventListener('fetch', (event) => event.respondWith(respond(event.request)));

async function respond(request) {
  switch (new URL(request.url).pathname) {
    case '/error':
      throw new Error('the guest failed on purpose');
    case '/echo':
      return new Response(request.body, {
        headers: { 'content-type': 'application/octet-stream' },
      });
    case '/headers': {
      let lines = '';
      for (const [name, value] of request.headers) {
        lines += `${name}: ${value}\n`;
      }
      return new Response(lines, { headers: { 'content-type': 'text/plain' } });
    }
    default:
      return new Response('Hello World\n', { headers: { 'content-type': 'text/plain' } });
  }
}
