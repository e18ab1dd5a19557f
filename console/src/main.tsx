import { render } from 'preact';
import { App } from './app';
import { takeTokenFromFragment } from './token';
import './style.css';

takeTokenFromFragment();
render(<App />, document.getElementById('app')!);
