/**
 * The participant's session bar: what the seat's own server says of the seat (its `wod/session` route,
 * which forwards to the wod service's `api/seat`), shown above the work area: the time left (a warning
 * and a notification at each of the answer's `warn_at` thresholds), the live progress, the instructor's
 * announcements (each once as a notification), a Check button per step when the workshop has steps; and,
 * once the workshop has ended or the hub says this server is gone, the end screen over everything.
 */

import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

/** How often the bar asks, unless the answer's `poll_seconds` says otherwise. */
const DEFAULT_POLL_SECONDS = 10;
/** Answers in a row that say the server is gone before the end screen replaces the lab. */
const GONE_AFTER = 2;

interface Announcement {
  id: number;
  at: string;
  text: string;
}

interface Session {
  student: number;
  workshop: string | null;
  state: 'active' | 'ended' | 'free';
  ends_at: string | null;
  seconds_left: number | null;
  warn_at: number[];
  announcements: Announcement[];
  progress: { ratio: number; executed: number; total: number; measured_at: string } | null;
  end: { message: string; url: string | null };
  steps?: { verified: number; total: number };
  poll_seconds?: number;
}

interface Step {
  index: number;
  title: string;
  status: 'passed' | 'failed' | 'unchecked';
  message: string | null;
  hints: string[];
  checked_at: string | null;
}

/** What one poll learnt: an answer, the hub saying this server is gone, or nothing usable (try again). */
type Outcome = { kind: 'answer'; session: Session } | { kind: 'gone' } | { kind: 'unreachable' };

function element<K extends keyof HTMLElementTagNameMap>(tag: K, className: string, text = ''): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}

/** "1 h 05 min", "9 min 30 s", "45 s". */
export function formatLeft(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (h > 0) {
    return `${h} h ${String(m).padStart(2, '0')} min`;
  }
  if (m >= 10) {
    return `${m} min`;
  }
  return m > 0 ? `${m} min ${String(s % 60).padStart(2, '0')} s` : `${s % 60} s`;
}

/** An http(s) address, or null: the end screen links nowhere else. */
function safeUrl(url: string | null | undefined): string | null {
  if (!url) {
    return null;
  }
  try {
    const parsed = new URL(url, window.location.href);
    return parsed.protocol === 'http:' || parsed.protocol === 'https:' ? parsed.href : null;
  } catch {
    return null;
  }
}

/** What this tab has already told the participant (kept across reloads of the page). */
class Seen {
  constructor(private readonly key: string) {}

  has(what: string): boolean {
    return this.all().includes(what);
  }

  add(what: string): void {
    const all = this.all();
    if (!all.includes(what)) {
      all.push(what);
      try {
        window.localStorage.setItem(this.key, JSON.stringify(all.slice(-200)));
      } catch {
        // storage full or refused: the worst case is a notification shown again
      }
    }
  }

  private all(): string[] {
    try {
      const value = JSON.parse(window.localStorage.getItem(this.key) || '[]');
      return Array.isArray(value) ? value : [];
    } catch {
      return [];
    }
  }
}

class SessionBar extends Widget {
  private readonly settings = ServerConnection.makeSettings();
  private readonly time = element('span', 'wod-SessionBar-time');
  private readonly progress = element('span', 'wod-SessionBar-progress');
  private readonly meter = element('progress', 'wod-SessionBar-meter');
  private readonly stepsButton = element('button', 'wod-SessionBar-stepsButton jp-mod-styled');
  private readonly stepsPanel = element('div', 'wod-SessionBar-steps');
  private readonly announcement = element('span', 'wod-SessionBar-announcement');
  private session: Session | null = null;
  private receivedAt = 0;
  private gone = 0;
  private ended = false;
  private timer: number | undefined;
  private ticker: number | undefined;
  private seen: Seen | null = null;

  constructor() {
    super();
    this.id = 'wod-session-bar';
    this.addClass('wod-SessionBar');
    const workshop = element('span', 'wod-SessionBar-workshop');
    const progress = element('span', 'wod-SessionBar-progressBox');
    this.meter.max = 1;
    progress.append(this.meter, this.progress);
    this.stepsButton.type = 'button';
    this.stepsButton.addEventListener('click', () => void this.toggleSteps());
    this.stepsButton.hidden = true;
    this.stepsPanel.hidden = true;
    this.node.append(workshop, this.time, progress, this.stepsButton, this.announcement);
    // On the page itself, not in the bar: the lab's panels contain their content (CSS contain), so
    // nothing inside the bar can open over them.
    document.body.append(this.stepsPanel);
    this.hide();
  }

  start(): void {
    void this.poll();
    // The time left counts down between answers.
    this.ticker = window.setInterval(() => this.renderTime(), 1000);
  }

  private url(...parts: string[]): string {
    return URLExt.join(this.settings.baseUrl, 'wod', ...parts);
  }

  private async request(url: string, init: RequestInit = {}): Promise<Response | null> {
    try {
      return await ServerConnection.makeRequest(url, { cache: 'no-store', headers: { Accept: 'application/json' }, ...init }, this.settings);
    } catch {
      return null; // the network, the proxy or the hub is not answering at all: no sign of an end
    }
  }

  /** Whether a response says that this server is no longer the participant's: stopped, or the login gone. */
  private isGone(response: Response, body: any): boolean {
    if (response.status === 424) {
      return true; // the hub: this user's server is not running
    }
    const base = new URL(this.settings.baseUrl, window.location.href).href;
    if (response.redirected && !response.url.startsWith(base)) {
      return true; // sent to the hub's login or OAuth pages
    }
    // Refused by the server itself (its login ended); the forwarder's own errors carry "error".
    return (response.status === 401 || response.status === 403) && !(body && typeof body.error === 'string');
  }

  private async fetchSession(): Promise<Outcome> {
    const response = await this.request(this.url('session'));
    if (response === null) {
      return { kind: 'unreachable' };
    }
    let body: any = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (this.isGone(response, body)) {
      return { kind: 'gone' };
    }
    if (response.ok && body && typeof body.state === 'string') {
      return { kind: 'answer', session: body as Session };
    }
    return { kind: 'unreachable' };
  }

  private async poll(): Promise<void> {
    const outcome = await this.fetchSession();
    if (outcome.kind === 'answer') {
      this.gone = 0;
      this.receive(outcome.session);
    } else if (outcome.kind === 'gone') {
      this.gone += 1;
      if (this.gone >= GONE_AFTER) {
        this.end();
      }
    }
    if (!this.ended) {
      const seconds = this.session?.poll_seconds;
      const every = typeof seconds === 'number' && seconds >= 1 && seconds <= 600 ? seconds : DEFAULT_POLL_SECONDS;
      // A server that says it is gone is asked again soon, to tell a hiccup from the end.
      this.timer = window.setTimeout(() => void this.poll(), outcome.kind === 'gone' ? 1000 : every * 1000);
    }
  }

  private receive(session: Session): void {
    const first = this.session === null;
    this.session = session;
    this.receivedAt = Date.now();
    if (session.state !== 'active') {
      this.end();
      return;
    }
    if (first || this.seen === null) {
      this.seen = new Seen(`wod-session:${session.student}:${session.workshop}:${session.ends_at}`);
    }
    this.show();
    const workshop = this.node.querySelector('.wod-SessionBar-workshop');
    if (workshop) {
      workshop.textContent = session.workshop || '';
    }
    this.renderTime();
    this.renderProgress();
    this.renderAnnouncements();
    this.renderStepsButton();
  }

  private secondsLeft(): number | null {
    const s = this.session;
    if (!s || typeof s.seconds_left !== 'number') {
      return null;
    }
    return s.seconds_left - (Date.now() - this.receivedAt) / 1000;
  }

  private renderTime(): void {
    const left = this.secondsLeft();
    if (left === null || this.session === null) {
      this.time.textContent = '';
      return;
    }
    this.time.textContent = `${formatLeft(left)} left`;
    const thresholds = (this.session.warn_at || []).filter(t => typeof t === 'number' && left <= t).sort((a, b) => a - b);
    this.time.classList.toggle('wod-mod-warning', thresholds.length > 0);
    // The nearest threshold passed is told once; passing several at once (a late login) tells only it.
    if (thresholds.length > 0 && this.seen && !this.seen.has(`warn:${thresholds[0]}`)) {
      thresholds.forEach(t => this.seen?.add(`warn:${t}`));
      Notification.warning(`The workshop ends in ${formatLeft(left)}: save your work.`, { autoClose: false });
    }
  }

  private renderProgress(): void {
    const p = this.session?.progress;
    if (!p) {
      this.meter.hidden = true;
      this.progress.textContent = 'Progress: not measured yet';
      return;
    }
    const ratio = Math.min(1, Math.max(0, Number(p.ratio) || 0));
    this.meter.hidden = false;
    this.meter.value = ratio;
    this.progress.textContent = `${Math.round(ratio * 100)}% done (${p.executed} of ${p.total} cells run)`;
  }

  private renderAnnouncements(): void {
    const list = (this.session?.announcements || []).filter(a => a && typeof a.text === 'string');
    const latest = list[list.length - 1];
    this.announcement.textContent = latest ? latest.text : '';
    this.announcement.title = latest ? `Announced at ${latest.at}` : '';
    for (const a of list) {
      if (this.seen && !this.seen.has(`announcement:${a.id}`)) {
        this.seen.add(`announcement:${a.id}`);
        Notification.info(a.text, { autoClose: false });
      }
    }
  }

  private renderStepsButton(): void {
    const steps = this.session?.steps;
    this.stepsButton.hidden = !steps;
    if (steps) {
      this.stepsButton.textContent = `Steps: ${steps.verified} of ${steps.total} verified`;
    } else {
      this.stepsPanel.hidden = true;
    }
  }

  private async toggleSteps(): Promise<void> {
    if (!this.stepsPanel.hidden) {
      this.stepsPanel.hidden = true;
      return;
    }
    // Fixed below its button.
    const below = this.stepsButton.getBoundingClientRect();
    this.stepsPanel.style.top = `${Math.round(below.bottom + 2)}px`;
    this.stepsPanel.style.left = `${Math.round(below.left)}px`;
    this.stepsPanel.hidden = false;
    this.stepsPanel.textContent = 'Loading the steps…';
    const response = await this.request(this.url('steps'));
    const body: any = response ? await response.json().catch(() => null) : null;
    if (!response || !response.ok || !body || !Array.isArray(body.steps)) {
      this.stepsPanel.textContent = (body && body.error) || 'The steps cannot be read at the moment; try again shortly.';
      return;
    }
    this.stepsPanel.textContent = '';
    for (const step of body.steps as Step[]) {
      const row = element('div', 'wod-Step');
      row.dataset.index = String(step.index);
      this.stepsPanel.append(row);
      this.renderStep(row, step);
    }
  }

  private renderStep(row: HTMLElement, step: Step): void {
    row.textContent = '';
    row.dataset.status = step.status;
    const title = element('span', 'wod-Step-title', `${step.index}. ${step.title}`);
    const status = element('span', `wod-Step-status wod-mod-${step.status}`, step.status === 'passed' ? 'Passed' : step.status === 'failed' ? 'Not yet' : '');
    const check = element('button', 'wod-Step-check jp-mod-styled jp-mod-accept', 'Check');
    check.type = 'button';
    check.addEventListener('click', () => void this.check(row, step, check));
    row.append(title, status, check);
    if (step.status === 'failed' && step.message) {
      row.append(element('div', 'wod-Step-message', step.message));
    }
    for (const hint of step.hints || []) {
      row.append(element('div', 'wod-Step-hint', `Hint: ${hint}`));
    }
  }

  private async check(row: HTMLElement, step: Step, button: HTMLButtonElement): Promise<void> {
    button.disabled = true;
    button.textContent = 'Checking…';
    const response = await this.request(this.url('steps', String(step.index), 'check'), { method: 'POST' });
    const body: any = response ? await response.json().catch(() => null) : null;
    if (response && response.ok && body && typeof body.status === 'string') {
      this.renderStep(row, body as Step);
      // The bar's count of verified steps: an answer now, then the usual rhythm.
      window.clearTimeout(this.timer);
      void this.poll();
      return;
    }
    button.disabled = false;
    button.textContent = 'Check';
    row.append(element('div', 'wod-Step-message', (body && body.error) || 'The check could not run at the moment; try again shortly.'));
  }

  /**
   * The end screen, over everything the lab shows. The lab's own dialogs (a lost server, a dead kernel)
   * are modal dialogs in the page's top layer, above any z-index: the end screen is one too, and closes
   * every other that opens, so it stays the one on top and its link stays usable.
   */
  private end(): void {
    if (this.ended) {
      return;
    }
    this.ended = true;
    window.clearTimeout(this.timer);
    window.clearInterval(this.ticker);
    const end = this.session?.end;
    const screen = element('dialog', 'wod-EndScreen');
    screen.id = 'wod-end-screen';
    screen.setAttribute('role', 'alertdialog');
    screen.setAttribute('aria-modal', 'true');
    const box = element('div', 'wod-EndScreen-box');
    box.append(element('h1', 'wod-EndScreen-title', 'This workshop has ended'));
    box.append(element('p', 'wod-EndScreen-message', end?.message || 'Thank you for taking part. Your seat has been cleaned up.'));
    const url = safeUrl(end?.url);
    if (url) {
      const link = element('a', 'wod-EndScreen-link', url);
      link.href = url;
      link.rel = 'noopener noreferrer';
      box.append(link);
    }
    screen.append(box);
    screen.addEventListener('cancel', event => event.preventDefault()); // Escape does not close it
    document.body.append(screen);
    this.stepsPanel.hidden = true;
    const closeOthers = () =>
      document.querySelectorAll<HTMLDialogElement>('dialog[open]:not(#wod-end-screen)').forEach(other => other.close());
    closeOthers();
    screen.showModal();
    new MutationObserver(closeOthers).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['open'] });
    this.hide();
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'wod-jupyterhub-sessionbar:plugin',
  description: "The workshop seat's session bar and end screen.",
  autoStart: true,
  activate: (app: JupyterFrontEnd) => {
    // Only under JupyterHub: a lab without a hub has no seat.
    if (!PageConfig.getOption('hubPrefix')) {
      return;
    }
    const bar = new SessionBar();
    app.shell.add(bar, 'header', { rank: 10 } as any);
    // Once every plugin is active: a notification made before the lab's toasts listen is never shown.
    void app.restored.then(() => bar.start());
  }
};

export default plugin;
