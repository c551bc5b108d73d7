// Path routing under /_/ with the History API.
import { useEffect, useState } from 'preact/hooks';

const BASE = '/_';

export function currentPath() {
  const path = location.pathname.startsWith(BASE) ? location.pathname.slice(BASE.length) : '/';
  return path || '/';
}

export function navigate(path, { replace = false } = {}) {
  const url = `${BASE}${path}`;
  if (replace) history.replaceState(null, '', url);
  else history.pushState(null, '', url);
  dispatchEvent(new Event('sovra:navigate'));
}

export function usePath() {
  const [path, setPath] = useState(currentPath());
  useEffect(() => {
    const update = () => setPath(currentPath());
    addEventListener('popstate', update);
    addEventListener('sovra:navigate', update);
    return () => {
      removeEventListener('popstate', update);
      removeEventListener('sovra:navigate', update);
    };
  }, []);
  return path;
}

// A link that navigates without reloading.
export function Link({ href, children, ...rest }) {
  const onClick = (event) => {
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
    event.preventDefault();
    navigate(href);
  };
  return (
    <a href={`${BASE}${href}`} onClick={onClick} {...rest}>
      {children}
    </a>
  );
}
